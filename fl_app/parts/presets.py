"""Named, ready-made scenarios for ``run_simulation.py --preset NAME``.

A preset sets config keys (and the number of clients); flags given on the command line
still win. A preset with ``variants`` is a comparison: one run per variant, on the same
data and seed, then a table and a plot.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fl_app.kit.extensions import Extension
from fl_app.kit.keys import ConfigError
from fl_app.kit.simulation import Simulation
from fl_app.parts.centralized import CENTRALIZED
from fl_app.parts.comparisons import comparison_of


@dataclass(frozen=True)
class Preset:
    """A named scenario: config values (the number of clients among them) and the variants
    of a comparison (none: one run)."""

    description: str
    config: dict[str, Any]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "linear-regression": Preset(
        "2 clients fit a linear regression (10 features -> 1 output, MSE), 10 local epochs, "
        "parameter averaging",
        {
            "dataset": "tabular-regression",
            "model": "linear",
            "strategy": "simple",
            "local-epochs": 10,
            "learning-rate": 0.01,
            "momentum": 0.0,
            "fraction-evaluate": 1.0,
            "quality-metric": "val_loss",
            "num-clients": 2,
        },
    ),
    "softmax-classifier": Preset(
        "4 clients train a softmax classifier on 10 features (3 classes), FedAvg",
        {
            "dataset": "tabular-classification",
            "model": "linear",
            "strategy": "fedavg",
            "local-epochs": 5,
            "learning-rate": 0.05,
            "momentum": 0.0,
            "num-clients": 4,
        },
    ),
    "digits-iid-vs-dirichlet": Preset(
        "FedAvg on digits, 10 clients: IID partitions vs Dirichlet(0.1) label skew",
        {"strategy": "fedavg", "num-clients": 10},
        variants={
            "iid": {"partitioner": "iid"},
            "dirichlet-0.1": {"partitioner": "dirichlet", "dirichlet-alpha": 0.1},
        },
    ),
    "strategies": Preset(
        "the four strategies on digits with Dirichlet(0.3) label skew, 10 clients, and the "
        "centralized reference",
        {"partitioner": "dirichlet", "dirichlet-alpha": 0.3, "num-clients": 10},
        variants={name: {"strategy": name} for name in ("simple", "quality", "fedavg", "hybrid")}
        | {CENTRALIZED: {}},
    ),
}


class PresetFlags(Extension):
    """``--preset NAME``: a preset's config values as the defaults (flags still win); a
    preset with variants is a comparison."""

    def add_flags(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--preset",
            help="a ready-made scenario: "
            + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items()),
        )

    def defaults(self, argv: Sequence[str]) -> dict[str, Any]:
        name = preset_named(argv)
        return {} if name is None else PRESETS[name].config

    def runner(
        self, args: argparse.Namespace, cfg: Any, simulation: Simulation
    ) -> Callable[[], Any] | None:
        variants = PRESETS[args.preset].variants if args.preset else {}
        return comparison_of(args, cfg, simulation, variants) if variants else None


def preset_named(argv: Sequence[str]) -> str | None:
    """The preset ``argv`` names (None: none); an unknown one is refused in one line."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset")
    name: str | None = first.parse_known_args(argv)[0].preset
    if name is not None and name not in PRESETS:
        raise ConfigError(f"--preset {name!r} is not allowed: must be one of {', '.join(PRESETS)}")
    return name
