"""Where a run's results go and how they are written."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fl_app.config import RunConfig
from fl_app.server_loop import RoundRecord


def run_directory(cfg: RunConfig) -> Path:
    """``output-dir/<run-name>`` as an absolute path (run-name defaults to strategy-time)."""
    name = cfg.run_name or f"{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    return (Path(cfg.output_dir).expanduser() / name).resolve()


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(payload, tmp, indent=2, default=_jsonable)
    os.replace(tmp.name, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def summarize(rounds: list[RoundRecord]) -> dict[str, Any]:
    """Final and best central accuracy, and the run's wall time."""
    accuracies = [r["central_accuracy"] for r in rounds if _finite(r.get("central_accuracy"))]
    return {
        "rounds": max((r["round"] for r in rounds), default=0),
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "final_loss": rounds[-1].get("central_loss") if rounds else None,
        "seconds": rounds[-1]["elapsed"] if rounds else 0.0,
    }


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class HistoryWriter:
    """Round listener that keeps ``history.json`` (config, rounds, summary) up to date."""

    def __init__(self, cfg: RunConfig, directory: Path) -> None:
        self.cfg = cfg
        self.path = directory / "history.json"
        self.rounds: list[RoundRecord] = []

    def __call__(self, record: RoundRecord) -> None:
        self.rounds.append(dict(record))
        payload = {
            "config": self.cfg.run_config,
            "rounds": self.rounds,
            "summary": summarize(self.rounds),
        }
        write_json_atomically(self.path, payload)
