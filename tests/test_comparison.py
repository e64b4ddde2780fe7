"""Comparisons over seeds: the table, its statistics against scipy's, the plot and JSON."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from scipy import stats

import run_simulation
from fl_app.client_app import client_app_for, make_client, sent_config
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from fl_app.kit.simulation import Simulation
from fl_app.parts.comparisons import SWEEP_RUN_KEY, Comparison, comparison_of
from fl_app.parts.statistics import (
    Estimate,
    SeedRun,
    comparison_table,
    mean_curve,
    paired_p_value,
    rounds_to_target,
    write_comparison,
)
from tests.fakes import MessageHalf
from tests.halves import API_FLAGS
from tests.processes import (
    IN_PROCESS,
    SHARED_CLIENTS,
    SHARED_ROUNDS,
    read_history,
    run_python,
    run_simulation_cli,
    simulate,
    without_timings,
)
from tests.test_plots import PNG
from tests.test_results import ROUNDS, record


def curve(*accuracies: float) -> list[dict[str, float]]:
    return [record(r, a, 1.0 - a) for r, a in enumerate(accuracies)]


def test_rounds_to_target() -> None:
    assert rounds_to_target(ROUNDS, 0.6) == 1
    assert rounds_to_target(ROUNDS, 0.85) == 2
    assert rounds_to_target(ROUNDS, 0.9) is None


def test_one_seed_table_and_plot(tmp_path: Path) -> None:
    slow = [record(0, 0.1, 2.3), record(1, 0.5, 1.2), record(2, 0.7, 0.9)]
    runs = {"fedavg": [SeedRun(42, ROUNDS, 12.34)], "simple": [SeedRun(42, slow, 10.0)]}
    assert comparison_table(runs, target=0.8).splitlines() == [
        "| run | final accuracy (%) | best accuracy (%) | rounds to 80% | wall time (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
        "| fedavg | 80.00 | 85.00 | 2 | 12.3 |",
        "| simple | 70.00 | 70.00 | not reached | 10.0 |",
    ]
    md, png = write_comparison(tmp_path, runs, target=0.8, title="t")
    assert md.read_text().startswith("# t\n\n| run |")
    assert png.read_bytes()[:8] == PNG


def test_regression_table_uses_loss() -> None:
    runs = {"a": [SeedRun(1, [record(0, None, 4.0), record(1, None, 0.5)], 3.0)]}
    assert comparison_table(runs, target=0.9).splitlines()[2] == "| a | 0.5000 | 0.5000 | 3.0 |"


def test_estimates_match_scipy_and_numpy() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(0.9, 0.02, size=5)
    estimate = Estimate(tuple(values))
    low, high = stats.t.interval(0.95, 4, loc=values.mean(), scale=stats.sem(values))
    assert estimate.mean == pytest.approx(values.mean(), rel=1e-12)
    assert estimate.std == pytest.approx(values.std(ddof=1), rel=1e-12)
    assert estimate.mean - estimate.half_width == pytest.approx(low, rel=1e-12)
    assert estimate.mean + estimate.half_width == pytest.approx(high, rel=1e-12)
    other = values + rng.normal(0.01, 0.01, size=5)
    assert paired_p_value(values, other) == pytest.approx(
        stats.ttest_rel(values, other).pvalue, rel=1e-10
    )
    assert paired_p_value([1.0, 2.0], [1.0, 2.0]) == 1.0  # no difference at all
    assert paired_p_value([1.0, 2.0], [0.5, 1.5]) == 0.0  # the same difference every seed
    assert math.isnan(Estimate((0.5,)).std)
    assert Estimate((0.5, math.nan, 0.7)).describe(digits=1) == "0.6 ± 0.1 (-0.7–1.9), 2/3 reached"


def test_several_seeds_give_intervals_and_a_paired_test(tmp_path: Path) -> None:
    # b is worse than a by 3 to 5 points on every seed: significant although the seeds
    # spread each variant by more than that; c differs from a by noise only.
    a = [0.90, 0.80, 0.95, 0.85]
    b = [0.86, 0.77, 0.90, 0.81]
    c = [0.91, 0.79, 0.94, 0.86]
    runs = {
        name: [SeedRun(seed, curve(0.1, v), 2.0) for seed, v in enumerate(values, start=1)]
        for name, values in {"a": a, "b": b, "c": c}.items()
    }
    lines = comparison_table(runs, target=0.85).splitlines()
    assert lines[0].endswith("| final accuracy: Δ vs best, paired t-test |")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:5]}
    mean_a, half_a = np.mean(a), stats.t.ppf(0.975, 3) * stats.sem(a)
    assert rows["a"][1] == (
        f"{100 * mean_a:.2f} ± {100 * np.std(a, ddof=1):.2f} "
        f"({100 * (mean_a - half_a):.2f}–{100 * (mean_a + half_a):.2f})"
    )
    assert rows["a"][3] == "1.0 ± 0.0 (1.0–1.0), 3/4 reached"  # seed 2 never reaches 85 %
    assert rows["a"][-1] == "best |"
    p_b, p_c = stats.ttest_rel(b, a).pvalue, stats.ttest_rel(c, a).pvalue
    assert p_b < 0.05 < p_c
    assert rows["b"][-1] == f"{100 * (np.mean(b) - mean_a):+.2f} pts, p = {p_b:.3f} * |"
    assert rows["c"][-1] == f"{100 * (np.mean(c) - mean_a):+.2f} pts, p = {p_c:.3f} |"
    assert "4 seeds: mean ± standard deviation" in "\n".join(lines)

    _, png = write_comparison(tmp_path, runs, target=0.85, title="t")
    assert png.read_bytes()[:8] == PNG
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["runs"]["b"]["seeds"] == [1, 2, 3, 4]
    assert saved["runs"]["b"]["final_accuracy"] == b
    assert saved["runs"]["a"]["rounds_to_target"] == [1.0, None, 1.0, 1.0]


def test_the_mean_curve_and_its_band() -> None:
    runs = [SeedRun(s, curve(0.1, v), 1.0) for s, v in enumerate([0.5, 0.7, 0.9])]
    points, band = mean_curve(runs, "central_accuracy")
    assert points == [(0, pytest.approx(0.1)), (1, pytest.approx(0.7))]
    half = stats.t.ppf(0.975, 2) * stats.sem([0.5, 0.7, 0.9])
    assert band[1] == (1, pytest.approx(0.7 - half), pytest.approx(0.7 + half))


def test_a_reference_row_is_tested_but_never_the_best() -> None:
    runs = {
        name: [SeedRun(seed, curve(0.1, v), 1.0) for seed, v in enumerate(values, start=1)]
        for name, values in {"a": [0.8, 0.7], "centralized": [0.95, 0.96]}.items()
    }
    rows = comparison_table(runs, target=0.9, references={"centralized"}).splitlines()[2:4]
    assert rows[0].endswith("| best |")
    p = stats.ttest_rel([0.95, 0.96], [0.8, 0.7]).pvalue
    assert rows[1].endswith(f"| +20.50 pts, p = {p:.3f} |")
    assert rows[1].split(" | ")[4] == "1.0 ± 0.0"  # wall time: mean ± std, no interval


@pytest.mark.slow
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


@pytest.mark.usefixtures("task_identity", "one_torch_thread")
def test_a_sweep_client_app_trains_with_the_config_of_the_run_each_message_names() -> None:
    cfg = RunConfig(local_epochs=1, device="cpu")
    runs = {"a": cfg, "b": RunConfig(local_epochs=1, device="cpu", val_fraction=0.3)}
    swept = client_app_for(lambda ctx, msg: runs[sent_config(msg, SWEEP_RUN_KEY)])
    node = {"partition-id": 2, "num-partitions": 5}
    sent = make_client(cfg, node).get_parameters({})
    for name, run_cfg in runs.items():
        message = MessageHalf.train_message(sent, {**node, SWEEP_RUN_KEY: name})
        context = Context(
            run_id=1,
            node_id=100,
            node_config=node,
            state=RecordDict(),
            run_config={},
        )
        want = make_client(run_cfg, node).fit(list(sent), {"server-round": 1})[2]["train_loss"]
        assert MessageHalf.train_loss(swept(message, context)) == want


def test_seeds_and_num_seeds_give_the_seeds_of_a_comparison() -> None:
    assert run_simulation.parse([]).runner is None  # one run
    assert run_simulation.parse(["--seeds", "3", "1", "2"]).runner.seeds == (3, 1, 2)  # type: ignore[union-attr]
    invocation = run_simulation.parse(["--num-seeds", "3", "--seed", "7"])
    assert isinstance(invocation.runner, Comparison)
    assert invocation.runner.seeds == (7, 8, 9)
    strategy = invocation.cfg.strategy
    assert invocation.runner.variants == {strategy: {}}  # one configuration, three seeds
    compared = run_simulation.parse(["--compare", "simple", "fedavg", "--seeds", "1", "2"]).runner
    assert isinstance(compared, Comparison)
    assert compared.variants == {"simple": {"strategy": "simple"}, "fedavg": {"strategy": "fedavg"}}


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--seeds", "1", "2", "1", "3", "2"], "--seeds 1 2 1 3 2 is not allowed: 1, 2 repeated"),
        (["--seeds", "1", "--num-seeds", "2"], "--seeds and --num-seeds are not allowed together"),
        (["--num-seeds", "0"], "--num-seeds 0 is not allowed"),
        (["--seeds", "1", "-1"], "'seed' = -1 is not allowed"),
    ],
)
def test_a_bad_seed_list_is_one_line_at_start(
    argv: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_simulation.main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert names in lines[0]


def test_seeds_are_refused_with_resume() -> None:
    args = argparse.Namespace(resume=Path("outputs/x"), seeds=[1], num_seeds=None)
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="--seeds/--num-seeds is not allowed with --resume"):
        comparison_of(args, cfg, Simulation(), {})


@pytest.mark.slow
@pytest.mark.parametrize("api", list(API_FLAGS))
def test_a_sweep_in_one_engine_gives_each_run_its_history_alone(
    shared_runs: Callable[[str, str], dict[str, Any]], tmp_path: Path, api: str
) -> None:
    """2 strategies x 2 seeds in one start of the engine: every run's history and final
    model are those of the same run started alone (the default seed: the shared runs, on
    Ray; the sweep and the other seed in this process where this copy can, whose results
    are Ray's: tests/test_inprocess.py)."""
    compared, seeds = ["fedavg", "hybrid"], [RunConfig().seed, RunConfig().seed + 1]
    done = run_python(
        [
            "run_simulation.py", "--output-dir", str(tmp_path), "--run-name", "sweep",
            "--compare", *compared, "--seeds", *map(str, seeds), *API_FLAGS[api], *IN_PROCESS,
            "--num-clients", str(SHARED_CLIENTS), "--num-server-rounds", str(SHARED_ROUNDS),
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| fedavg |" in (tmp_path / "sweep" / "comparison.md").read_text()
    for strategy in compared:
        alone = {seeds[0]: shared_runs(strategy, api)}
        alone[seeds[1]] = simulate(
            tmp_path / f"{strategy}-{seeds[1]}",
            "--strategy", strategy, "--seed", str(seeds[1]), *API_FLAGS[api], *IN_PROCESS,
            "--num-clients", str(SHARED_CLIENTS), "--num-server-rounds", str(SHARED_ROUNDS),
        )  # fmt: skip
        for seed, run in alone.items():
            swept = tmp_path / "sweep" / strategy / f"seed-{seed}"
            assert without_timings(read_history(swept)) == without_timings(run), (strategy, seed)
            mine, theirs = (
                torch.load(d / "final_model.pt") for d in (swept, Path(run["directory"]))
            )
            assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


@pytest.mark.slow
def test_a_sweep_records_a_failed_run_and_compares_the_others(tmp_path: Path) -> None:
    # No client reports "nope": quality weighting rejects every update, and stops.
    done = run_python(
        [
            "run_simulation.py", "--output-dir", str(tmp_path), "--run-name", "sweep",
            "--compare", "quality", "fedavg", "--quality-metric", "nope",
            "--max-empty-rounds", "1", "--num-clients", "2", "--num-server-rounds", "2",
        ]
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "run sweep/quality failed: round 1: nothing aggregated" in done.stdout
    assert "1 run(s) failed: sweep/quality" in done.stderr
    table = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "| fedavg |" in table
    assert "| quality |" not in table
    assert len(read_history(tmp_path / "sweep" / "fedavg")["rounds"]) == 3
