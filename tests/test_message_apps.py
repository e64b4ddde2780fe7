"""Flower's own kinds of apps against this project's, on Flower's simulation engine.

The apps live in tests/message_apps.py, written the way Flower's docs write them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import strategies
from tests.halves import API_FLAGS
from tests.processes import read_history, run_python

pytestmark = pytest.mark.slow


def scenario(tmp_path: Path, name: str) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    done = run_python(["-m", "tests.message_apps", name, str(out)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results: dict[str, Any] = json.loads(out.read_text())
    return results


def test_flowers_quickstart_client_learns_under_each_message_api_strategy(tmp_path: Path) -> None:
    results = scenario(tmp_path, "quickstart")
    assert set(results) == set(strategies.REGISTRY)
    for name, result in results.items():
        assert result["accepted"] == [4, 4, 4], name  # every reply aggregated, every round
        losses = result["loss"]
        assert losses[-1] < 0.5 * losses[0], f"{name}: central loss {losses}"


def test_this_client_app_learns_under_flowers_own_message_api_fedavg(tmp_path: Path) -> None:
    results = scenario(tmp_path, "flower-fedavg")
    accuracy = results["accuracy"]
    assert accuracy[-1] > accuracy[0] + 0.3
    assert results["federated"]["accuracy"] > 0.5  # our evaluate replies, aggregated by Flower


@pytest.mark.parametrize("api", list(API_FLAGS))
def test_run_simulation_stops_with_one_line_after_max_empty_rounds(
    tmp_path: Path, api: str
) -> None:
    flags = ["--strategy", "quality", "--quality-metric", "val_f1", "--max-empty-rounds", "2"]
    done = run_python(
        [
            "run_simulation.py", "--output-dir", str(tmp_path), "--run-name", "frozen",
            *API_FLAGS[api], "--num-clients", "3", "--num-server-rounds", "5", *flags,
        ]
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "round 2: nothing aggregated" in errors[0]
    assert "quality metric 'val_f1' missing" in errors[0]
    assert "[train_loss, val_accuracy, val_loss]" in errors[0]
    assert "max-empty-rounds=2" in errors[0]
    # The user saw round 1's reason too, and the records say what happened.
    assert "round 1: nothing aggregated" in done.stdout
    rounds = read_history(tmp_path / "frozen")["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [(r["accepted"], r["rejected"], r["sampled"]) for r in rounds[1:]] == [(0, 3, 3)] * 2
    assert rounds[1]["central_loss"] == rounds[0]["central_loss"]  # the model kept
