"""The run's plots: accuracy.png (when there is an accuracy) and loss.png at the end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import strategies
from fl_app.kit.config import RunConfig
from fl_app.parts.plots import RunPlots
from tests.halves import API_FLAGS
from tests.test_results import ROUNDS, record

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_finished_run_gets_its_accuracy_and_loss_plots(tmp_path: Path) -> None:
    plots = RunPlots(RunConfig(strategy="hybrid"), tmp_path)
    for done in range(1, len(ROUNDS) + 1):
        plots.round_done(ROUNDS[:done])
    assert list(tmp_path.iterdir()) == []  # nothing before the end
    plots.run_done([np.ones(3)], ROUNDS)
    for png in ("accuracy.png", "loss.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG
    assert not list(tmp_path.glob("*.tmp"))


def test_regression_runs_plot_loss_only(tmp_path: Path) -> None:
    plots = RunPlots(RunConfig(), tmp_path)
    rounds = [record(0, None, 9.0), record(1, None, 0.02)]
    plots.round_done(rounds[:1])
    plots.round_done(rounds)
    plots.run_done([], rounds)
    assert (tmp_path / "loss.png").exists()
    assert not (tmp_path / "accuracy.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("api", list(API_FLAGS))
@pytest.mark.parametrize("strategy", sorted(strategies.REGISTRY))
def test_each_simulated_run_gets_its_plots(
    shared_runs: Callable[[str, str], dict[str, Any]], strategy: str, api: str
) -> None:
    run = Path(shared_runs(strategy, api)["directory"])
    for png in ("accuracy.png", "loss.png"):
        assert (run / png).read_bytes()[:8] == PNG
