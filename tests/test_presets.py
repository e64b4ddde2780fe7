"""Presets and comparisons end to end: each preset for one short round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fl_app.presets import PRESETS
from tests.processes import read_history, run_simulation_cli

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


def test_linear_regression_preset_fits_with_mse(tmp_path: Path) -> None:
    stdout = run_simulation_cli(
        tmp_path, "--preset", "linear-regression", "--run-name", "lr", "--num-server-rounds", "1"
    )
    run = tmp_path / "lr"
    rounds = read_history(run)["rounds"]
    config = json.loads((run / "config.json").read_text())
    assert (config["dataset"], config["model"], config["strategy"], config["local-epochs"]) == (
        "tabular-regression", "linear", "simple", 10,
    )  # fmt: skip
    assert rounds[1]["results"] == 2  # the two clients' parameters were averaged
    # Loss, not accuracy, is the headline: the MSE falls towards the noise level (0.01).
    assert "central_accuracy" not in rounds[1]
    assert rounds[1]["central_loss"] < 0.1 * rounds[0]["central_loss"]
    assert "done: final loss" in stdout
    assert not (run / "accuracy.png").exists()
    assert (run / "loss.png").read_bytes()[:8] == PNG
    weight = torch.load(run / "final_model.pt")["1.weight"]
    assert tuple(weight.shape) == (1, 10)


def test_softmax_classifier_preset_learns_three_classes(tmp_path: Path) -> None:
    run_simulation_cli(
        tmp_path, "--preset", "softmax-classifier", "--run-name", "sm", "--num-server-rounds", "1"
    )
    rounds = read_history(tmp_path / "sm")["rounds"]
    assert rounds[1]["results"] == 4
    assert rounds[1]["central_accuracy"] > 0.6  # chance is 1/3
    assert tuple(torch.load(tmp_path / "sm" / "final_model.pt")["1.weight"].shape) == (3, 10)


@pytest.mark.parametrize("preset", [name for name, p in PRESETS.items() if p.variants])
def test_comparison_presets_write_a_table_and_a_plot(tmp_path: Path, preset: str) -> None:
    run_simulation_cli(
        tmp_path,
        "--preset",
        preset,
        "--run-name",
        "cmp",
        "--num-server-rounds",
        "1",
        "--num-clients",
        "4",
    )
    variants = PRESETS[preset].variants
    table = (tmp_path / "cmp" / "comparison.md").read_text().splitlines()
    rows = [
        line for line in table if line.startswith("| ") and not line.startswith(("| run", "| ---"))
    ]
    assert [row.split("|")[1].strip() for row in rows] == list(variants)
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:8] == PNG
    for variant, overrides in variants.items():
        config = read_history(tmp_path / "cmp" / variant)["config"]
        assert {key: config[key] for key in overrides} == overrides
        # Same data and seed for every variant: only the variant's keys differ.
        assert config["seed"] == 42


def test_compare_flag_runs_the_named_strategies_on_the_same_data_per_seed(
    tmp_path: Path,
) -> None:
    stdout = run_simulation_cli(
        tmp_path,
        "--compare", "simple", "fedavg",
        "--seeds", "1", "2",
        "--run-name", "cmp",
        "--num-server-rounds", "2",
        "--num-clients", "4",
        "--fraction-fit", "0.5",
        "--partitioner", "dirichlet",
        "--target-accuracy", "0.5",
    )  # fmt: skip
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert (
        "| run | final accuracy (%) | best accuracy (%) | rounds to 50% | wall time (s) |" in table
    )
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["runs"]
    for strategy in ("simple", "fedavg"):
        finals = [
            read_history(tmp_path / "cmp" / strategy / f"seed-{seed}")["summary"]["final_accuracy"]
            for seed in (1, 2)
        ]
        assert saved[strategy]["seeds"] == [1, 2]
        assert saved[strategy]["final_accuracy"] == finals
        row = next(line for line in table.splitlines() if line.startswith(f"| {strategy} |"))
        assert row.split(" | ")[1].startswith(f"{100 * sum(finals) / 2:.2f} ± ")
    for seed in (1, 2):
        # Unequal Dirichlet partitions: the same data and clients, weighted differently.
        simple = read_history(tmp_path / "cmp" / "simple" / f"seed-{seed}")["rounds"][1]
        fedavg = read_history(tmp_path / "cmp" / "fedavg" / f"seed-{seed}")["rounds"][1]
        assert len(simple["sampled_partitions"]) == 2  # of 4: the same 2 for both strategies
        assert simple["sampled_partitions"] == fedavg["sampled_partitions"]
        assert simple["train_loss"] == pytest.approx(fedavg["train_loss"])
        assert simple["weights"] != fedavg["weights"]
    assert "comparison:" in stdout
