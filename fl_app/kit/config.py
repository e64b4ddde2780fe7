"""One typed, validated run configuration.

Each field is a key of ``[tool.flwr.app.config]`` in ``pyproject.toml`` (``snake_case``
here, ``kebab-case`` there), whose value there is the key's default (the one place a
default is set), and a ``--flag`` of ``run_simulation.py``. A bad key or value stops the
run at start with one line naming the key, the value and what is allowed; every rule
across keys is checked here, once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import strategies
from fl_app import task
from fl_app.kit import data
from fl_app.kit.keys import BOUNDS, Choices, ConfigError, Names, fail, key_of, keys, option
from fl_app.parts.baseline_keys import BaselineKeys  # part: flower-baselines
from fl_app.parts.faults import FaultKeys  # part: faults
from fl_app.parts.legacy.keys import LegacyKeys  # part: legacy-api
from fl_app.parts.privacy import DpKeys  # part: dp
from fl_app.parts.tracking import TrackingKeys  # part: tracking
from fl_app.parts.zoo import ZooKeys  # part: zoo
from strategies.hybrid import ROBUST_FILTERS
from strategies.quality_weighted import (
    QUALITY_DIRECTIONS,
    QUALITY_SOURCES,
    QUALITY_WEIGHTINGS,
    QualityWeightedRule,
    higher_is_better,
)
from strategies.sampling import SAMPLINGS

if TYPE_CHECKING:
    from fl_app.kit.results import RunListener


DATASETS = Names(task.DATASETS, task.DATASET_PREFIXES)
MODELS = Names(task.MODELS)
DEVICES = ("auto", "cpu", "cuda")


@keys
class CoreKeys:
    """The keys of the core (an optional part's own keys are in its files: see
    :class:`RunConfig`)."""

    # Strategy and rounds
    strategy: str = option(
        "aggregation strategy (flower-*: Flower's robust aggregators, as baselines)",
        choices=tuple(strategies.CHOICES),
    )
    num_server_rounds: int = option("number of federated rounds", at_least=1)
    fraction_fit: float = option(
        "fraction of clients sampled to train per round", above=0, at_most=1
    )
    fraction_evaluate: float = option(
        "fraction of clients sampled for federated evaluation (0: none)", at_least=0, at_most=1
    )
    min_fit_clients: int = option("minimum clients to train per round", at_least=1)
    min_evaluate_clients: int = option("minimum clients to evaluate per round", at_least=0)
    min_available_clients: int = option(
        "clients that must be connected before a round starts", at_least=1
    )
    client_sampling: str = option(
        "how clients are sampled: seeded (a function of seed, round and partition ids; each "
        "node is asked its partition id once) or flower (Flower's own, unseeded)",
        choices=SAMPLINGS,
    )
    round_timeout: float = option("seconds to wait for clients per round (0: no limit)", at_least=0)
    num_clients: int = option(
        "clients (data partitions) a simulation runs (run_simulation.py; under flwr run, "
        "the federation's num-supernodes)",
        at_least=1,
    )
    # Local training
    local_epochs: int = option("local epochs per round on each client", at_least=1)
    batch_size: int = option("local mini-batch size", at_least=1)
    learning_rate: float = option("client SGD learning rate", above=0)
    momentum: float = option("client SGD momentum (reset every round)", at_least=0, below=1)
    # Data
    dataset: str = option(
        "the data the clients and the server load (fl_app/task.py)", choices=DATASETS
    )
    partitioner: str = option(
        "how the pooled training data is split over clients",
        choices=Names(data.PARTITIONERS),
    )
    dirichlet_alpha: float = option(
        "Dirichlet(α) label-skew concentration (small: more skew)", above=0
    )
    test_fraction: float = option(
        "share of the pooled data held out as the server test set", above=0, below=1
    )
    server_val_fraction: float = option(
        "share of the pooled data held out for server-side quality scoring", above=0, below=1
    )
    val_fraction: float = option(
        "share of each client's data held out for local validation", above=0, below=1
    )
    # Model and run
    model: str = option("model architecture (fl_app/task.py)", choices=MODELS)
    seed: int = option(
        "seed of data splits, partitioning, model init, client sampling and training",
        at_least=0,
    )
    device: str = option("torch device (auto: cuda when available)", choices=DEVICES)
    output_dir: str = option("folder that receives <run-name>/history.json")
    run_name: str = option("name of this run's output folder (empty: strategy and time)")
    # Strategy knobs (each strategy reads the fields of its options dataclass; the
    # defaults are the strategies' own)
    server_learning_rate: float = option("server learning rate η", above=0)
    server_momentum: float = option("server momentum β", at_least=0, below=1)
    max_empty_rounds: int = option(
        "stop the run with an error after this many rounds in a row that aggregated "
        "nothing (0: never stop)",
        at_least=0,
    )
    quality_source: str = option(
        "client-reported or server-scored quality", choices=QUALITY_SOURCES
    )
    quality_metric: str = option("metric used as quality (e.g. val_loss)")
    quality_direction: str = option(
        "max/min: higher/lower quality is better; auto: min iff the metric is a loss",
        choices=QUALITY_DIRECTIONS,
    )
    quality_weighting: str = option("quality → weight", choices=QUALITY_WEIGHTINGS)
    quality_temperature: float = option("softmax temperature τ", above=0)
    quality_floor: float = option("linear map: quality whose weight is zero")
    hybrid_lambda: float = option("hybrid: share λ of the data-size weights", at_least=0, at_most=1)
    hybrid_lambda_end: float = option(
        "hybrid: λ at the last round, moved linearly (-1: constant λ)",
        at_least=-1,
        at_most=1,
    )
    robust_filter: str = option("hybrid: robust filter", choices=ROBUST_FILTERS)
    robust_mad_k: float = option("mad filter: k of median + k·MAD", above=0)
    robust_clip_norm: float = option(
        "clip filter: max update norm (0: the round's median)", at_least=0
    )
    robust_norm_ratio: float = option(
        "direction filter: drop update norms above this many times the round's median",
        above=1,
    )
    robust_min_cosine: float = option(
        "direction filter: least cosine to the clipped mean update that is kept",
        at_least=-1,
        below=1,
    )

    def check(self) -> None:
        """The rules across keys (a part's keys class adds its own and calls ``super()``)."""
        needed = max(self.min_available_clients, self.min_fit_clients)
        if needed > self.num_clients:
            fail(
                "num-clients",
                self.num_clients,
                f">= {needed}: min-available-clients/min-fit-clients need that many "
                "(the run would wait forever)",
            )
        if self.min_fit_clients > self.min_available_clients:
            fail(
                "min-fit-clients",
                self.min_fit_clients,
                f"at most min-available-clients ({self.min_available_clients})",
            )
        if self.min_evaluate_clients > self.min_available_clients:
            fail(
                "min-evaluate-clients",
                self.min_evaluate_clients,
                f"at most min-available-clients ({self.min_available_clients})",
            )
        if self.test_fraction + self.server_val_fraction >= 0.9:
            fail(
                "server-val-fraction",
                self.server_val_fraction,
                f"test-fraction + server-val-fraction below 0.9 (test-fraction is {self.test_fraction})",
            )
        dataset = task.dataset_of(self.dataset)
        if dataset.features != "images" and task.MODELS[self.model].images_only:
            vector_models = [name for name, m in task.MODELS.items() if not m.images_only]
            fail(
                "model",
                self.model,
                f"one of {', '.join(vector_models)} with dataset {self.dataset!r} "
                f"({dataset.features}, not images)",
            )
        if not dataset.partitioned and self.partitioner != "iid":
            fail(
                "partitioner",
                self.partitioner,
                f"iid with dataset {self.dataset!r} (each client's data comes from its own "
                "generator)",
            )
        regression = dataset.task == "regression"
        if regression and self.partitioner != "iid":
            fail(
                "partitioner",
                self.partitioner,
                f"iid with regression dataset {self.dataset!r} (the others split by class)",
            )
        uses_quality = issubclass(strategies.rule_type(self.strategy), QualityWeightedRule)
        if regression and uses_quality and "accuracy" in self.quality_metric:
            fail(
                "quality-metric",
                self.quality_metric,
                "a loss (e.g. val_loss) for a regression dataset",
            )
        lower_is_better = not higher_is_better(self.quality_metric, self.quality_direction)
        if self.quality_weighting == "linear" and lower_is_better and self.quality_floor <= 0:
            fail(
                "quality-floor",
                self.quality_floor,
                "> 0 for a lower-is-better metric (it is the worst loss that still gets weight)",
            )

    def fit_clients(self, available: int) -> int:
        """Clients a training round samples of ``available`` (Flower's FedAvg:
        ``max(int(fraction-fit · available), min-fit-clients)``)."""
        return max(int(self.fraction_fit * available), self.min_fit_clients)

    def evaluate_clients(self, available: int) -> int:
        """Clients an evaluation round asks of ``available`` (none at fraction-evaluate 0)."""
        if self.fraction_evaluate == 0:
            return 0
        return max(int(self.fraction_evaluate * available), self.min_evaluate_clients)

    def part_listeners(self, directory: Path) -> list[RunListener]:
        """What the optional parts listen to a run in ``directory`` with (each part's keys
        class adds its own and calls ``super()``); the core adds nothing."""
        return []


@dataclass(frozen=True, kw_only=True)
class RunConfig(
    TrackingKeys,  # part: tracking
    BaselineKeys,  # part: flower-baselines
    ZooKeys,  # part: zoo
    DpKeys,  # part: dp
    FaultKeys,  # part: faults
    LegacyKeys,  # part: legacy-api
    CoreKeys,
):
    """Every knob of a run, with its default: the core's keys, then those of each optional
    part this copy has (docs/template.md), one base class a part."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from ``{kebab-key: value}`` (a Flower ``run_config``); defaults fill the rest."""
        fields = {key_of(f.name): f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(fields)}")
            kwargs[fields[key].name] = value
        return cls(**kwargs)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            key = key_of(f.name)
            value = _coerce(key, getattr(self, f.name), f.type)
            object.__setattr__(self, f.name, value)  # frozen: ints become floats, "true" a bool
            _check_field(key, value, f.metadata)
        self.check()

    @property
    def run_config(self) -> dict[str, Any]:
        """This config as a Flower ``run_config`` (kebab-case keys)."""
        return {key_of(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}


def describe_choices(choices: Choices) -> str:
    """The allowed values, comma-separated."""
    return ", ".join(choices) if isinstance(choices, tuple) else choices.describe()


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check the type of ``value``; accept ints for floats and true/false strings for bools."""
    type_name = annotation if isinstance(annotation, str) else annotation.__name__
    if type_name == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif type_name == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    return fail(key, value, f"of type {type_name}")


def _check_field(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        fail(key, value, "a finite number")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        fail(key, value, f"one of {describe_choices(choices)}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    for name, symbol, holds in BOUNDS:
        limit = meta.get(name)
        if limit is not None and not holds(value, limit):
            fail(key, value, f"{symbol} {limit}")
