"""Run folders: the files, columns, summaries and tables written for a run."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from fl_app.kit.config import RunConfig
from fl_app.kit.results import (
    METRICS_COLUMNS,
    RunWriter,
    describe,
    summarize,
    write_text_atomically,
)


def record(round_: int, accuracy: float | None, loss: float, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "round": round_,
        "central_loss": loss,
        "seconds": 1.0,
        "elapsed": float(round_ + 1),
    }
    if accuracy is not None:
        r["central_accuracy"] = accuracy
    return r | extra


ROUNDS = [
    record(0, 0.10, 2.3),
    record(1, 0.60, 1.0, federated_accuracy=0.55, federated_loss=1.1, train_loss=1.2, sampled=4,
           results=4, failures=0, rejected=0, weights='{"1": 0.5}'),
    record(2, 0.85, 0.5, federated_accuracy=0.8, federated_loss=0.6, train_loss=0.55, sampled=4,
           results=3, failures=1, rejected=1),
    record(3, 0.80, 0.6, sampled=4, results=4, failures=0, rejected=0),
]  # fmt: skip


def test_run_writer_keeps_the_documented_files_up_to_date(tmp_path: Path) -> None:
    saved: list[tuple[list[np.ndarray], Path]] = []
    writer = RunWriter(
        RunConfig(strategy="hybrid"), tmp_path, lambda arrays, path: saved.append((arrays, path))
    )
    assert (
        json.loads((tmp_path / "config.json").read_text())
        == RunConfig(strategy="hybrid").run_config
    )
    for done in (1, 2):
        writer.round_done(ROUNDS[:done])
    # After every round: history and metrics so far (an interrupted run keeps them).
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1]
    assert history["summary"]["final_accuracy"] == 0.60
    for done in (3, 4):
        writer.round_done(ROUNDS[:done])
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == METRICS_COLUMNS
    assert [int(row["round"]) for row in rows] == [0, 1, 2, 3]
    assert rows[2]["failures"] == "1"
    assert rows[2]["rejected"] == "1"
    assert rows[2]["federated_accuracy"] == "0.8"
    assert rows[0]["federated_accuracy"] == ""  # round 0 has no federated evaluation
    assert "weights" not in rows[1]

    final = [np.ones(3)]
    writer.run_done(final, ROUNDS)
    assert saved == [(final, tmp_path / "final_model.pt")]
    assert not list(tmp_path.glob("*.tmp"))


def test_summary_headline_is_accuracy_or_loss() -> None:
    summary = summarize(ROUNDS)
    assert summary == {
        "rounds": 3,
        "final_accuracy": 0.80,
        "best_accuracy": 0.85,
        "final_loss": 0.6,
        "best_loss": 0.5,
        "seconds": 4.0,
        "ray_nodes": [],  # part: ray-cluster
        "epsilon": None,  # part: dp
    }
    assert describe(summary).startswith("final accuracy 0.8000, best 0.8500, 3 rounds")
    regression = summarize([record(0, None, 9.0), record(1, None, 0.25)])
    assert regression["final_accuracy"] is None
    assert describe(regression).startswith("final loss 0.2500, best 0.2500")
    private = summarize([record(0, 0.1, 2.0), record(1, 0.5, 1.0, epsilon=3.25)])  # part: dp
    assert private["epsilon"] == 3.25  # part: dp
    assert describe(private).endswith("privacy spent ε = 3.25")  # part: dp


def test_atomic_write_replaces_whole_and_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.txt"
    write_text_atomically(path, "one")
    write_text_atomically(path, "two")
    assert path.read_text() == "two"
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]
