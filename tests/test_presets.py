"""Presets (the optional part ``presets``): each is a valid config; end to end, each for
one short round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import run_simulation
from fl_app.parts.presets import PRESETS
from tests.processes import read_history, run_simulation_cli
from tests.test_config import parsed


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name: str) -> None:
    invocation = run_simulation.parse(["--preset", name])
    cfg, comparison = invocation.cfg, invocation.runner
    preset = PRESETS[name]
    assert {k: cfg.run_config[k] for k in preset.config} == preset.config
    assert (comparison.variants if preset.variants else comparison) == (preset.variants or None)


def test_flags_win_over_a_preset() -> None:
    cfg = parsed(["--preset", "linear-regression", "--local-epochs", "2", "--num-clients", "3"])
    assert cfg.local_epochs == 2
    assert cfg.num_clients == 3
    assert cfg.dataset == "tabular-regression"


def test_unknown_preset_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_simulation.main(["--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--preset 'nope'" in err[0]
    assert "linear-regression" in err[0]


# ---- end to end ------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
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
    assert rounds[1]["results"] == 2, (rounds[1], stdout[-3000:])  # both clients' were averaged
    # Loss, not accuracy, is the headline: the MSE falls towards the noise level (0.01).
    assert "central_accuracy" not in rounds[1]
    assert rounds[1]["central_loss"] < 0.1 * rounds[0]["central_loss"]
    assert "done: final loss" in stdout
    assert not (run / "accuracy.png").exists()
    assert (run / "loss.png").read_bytes()[:8] == PNG
    weight = torch.load(run / "final_model.pt")["1.weight"]
    assert tuple(weight.shape) == (1, 10)


@pytest.mark.slow
def test_softmax_classifier_preset_learns_three_classes(tmp_path: Path) -> None:
    run_simulation_cli(
        tmp_path, "--preset", "softmax-classifier", "--run-name", "sm", "--num-server-rounds", "1"
    )
    rounds = read_history(tmp_path / "sm")["rounds"]
    assert rounds[1]["results"] == 4
    assert rounds[1]["central_accuracy"] > 0.6  # chance is 1/3
    assert tuple(torch.load(tmp_path / "sm" / "final_model.pt")["1.weight"].shape) == (3, 10)


@pytest.mark.slow
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
