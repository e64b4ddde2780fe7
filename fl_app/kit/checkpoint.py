"""Atomic per-round checkpoints: global model, strategy state and the rounds so far.

One ``checkpoint.npz`` per run folder, replaced after every round by writing a temporary
file and renaming it, so a run killed at any moment leaves the last complete round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fl_app.kit.files import atomic_file, json_default

CHECKPOINT_FILE = "checkpoint.npz"

Arrays = list[NDArray[Any]]


@dataclass
class Checkpoint:
    """The state after round ``round``: enough to continue as if never interrupted."""

    round: int
    global_model: Arrays
    strategy_state: dict[str, Arrays] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, then rename)."""
    arrays = {f"global/{i}": a for i, a in enumerate(checkpoint.global_model)}
    for name, state in checkpoint.strategy_state.items():
        arrays |= {f"state/{name}/{i}": a for i, a in enumerate(state)}
    meta = {
        "round": checkpoint.round,
        "rounds": checkpoint.rounds,
        "state": sorted(checkpoint.strategy_state),
    }
    arrays["meta"] = np.array(json.dumps(meta, default=json_default))
    with atomic_file(path, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))

        def layers(prefix: str) -> Arrays:
            count = sum(1 for key in data.files if key.startswith(prefix))
            return [data[f"{prefix}{i}"] for i in range(count)]

        return Checkpoint(
            round=int(meta["round"]),
            global_model=layers("global/"),
            strategy_state={name: layers(f"state/{name}/") for name in meta["state"]},
            rounds=list(meta["rounds"]),
        )
