"""A run's checkpoint after each round: the global model, strategy state and rounds so far."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fl_app.kit.files import atomic_file, json_default
from fl_app.kit.keys import ConfigError
from fl_app.kit.results import NDArrays, RoundRecord

CHECKPOINT_FILE = "checkpoint.npz"


@dataclass
class Checkpoint:
    """The state after round ``round``: enough to continue as if never interrupted."""

    round: int
    global_model: NDArrays
    strategy_state: dict[str, NDArrays] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    arrays = {f"global/{i}": a for i, a in enumerate(checkpoint.global_model)}
    for name, state in checkpoint.strategy_state.items():
        arrays |= {f"state/{name}/{i}": a for i, a in enumerate(state)}
    states = sorted(checkpoint.strategy_state)
    meta = {"round": checkpoint.round, "rounds": checkpoint.rounds, "state": states}
    arrays["meta"] = np.array(json.dumps(meta, default=json_default))
    with atomic_file(path, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)


def load_checkpoint(path: Path) -> Checkpoint:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))

        def layers(prefix: str) -> NDArrays:
            count = sum(1 for key in data.files if key.startswith(prefix))
            return [data[f"{prefix}{i}"] for i in range(count)]

        states = {name: layers(f"state/{name}/") for name in meta["state"]}
        return Checkpoint(int(meta["round"]), layers("global/"), states, list(meta["rounds"]))


def saved_run(directory: Path) -> dict[str, Any]:
    """The config the run in ``directory`` was started with, once it has a checkpoint."""
    refused = f"config 'resume-from' = {str(directory)!r} is not allowed"
    try:
        config: dict[str, Any] = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{refused}: not a run folder of this app ({err})") from err
    if not (directory / CHECKPOINT_FILE).is_file():
        raise ConfigError(f"{refused}: it has no {CHECKPOINT_FILE} (no round finished)")
    return config


def resumed(cfg: Any) -> tuple[Any, Checkpoint | None]:
    """``cfg`` writing to the run folder ``resume-from`` names, and that run's last checkpoint
    (``cfg`` and None where it names none). The config's keys win over the saved ones."""
    if not cfg.resume_from:
        return cfg, None
    directory = Path(cfg.resume_from).expanduser().resolve()
    saved_run(directory)
    folder = {"output_dir": str(directory.parent), "run_name": directory.name}
    return dataclasses.replace(cfg, **folder), load_checkpoint(directory / CHECKPOINT_FILE)
