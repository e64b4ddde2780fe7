"""Experiment trackers: what each one logged, read back with the tool's own reader. Offline."""

from __future__ import annotations

import builtins
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from fl_app.parts.tracking import TRACKERS, Tracker, start_tracker
from tests.processes import ROOT, read_history, run_python
from tests.test_config import assert_one_line_error

TRACKING = sorted(name for name in TRACKERS if name != "none")
WANDB = Path(sys.executable).with_name("wandb")

# Round records as the server loop writes them: lists, text, None and NaN are not logged.
ROUNDS: list[dict[str, Any]] = [
    {"round": 0, "central_accuracy": 0.125, "central_loss": 2.25, "seconds": 0.5, "elapsed": 0.5},
    {"round": 1, "central_accuracy": 0.5, "central_loss": 1.5, "federated_accuracy": 0.45,
     "federated_loss": 1.75, "train_loss": 1.25, "sampled": 3, "results": 3, "accepted": 2,
     "rejected": 1, "failures": 0, "weights": [0.5, 0.5], "sampled_partitions": [2, 0, 1],
     "seconds": 1.5, "elapsed": 2.0},
    {"round": 2, "central_accuracy": 0.5, "central_loss": 1.5, "federated_accuracy": None,
     "train_loss": math.nan, "sampled": 3, "results": 0, "accepted": 0, "rejected": 0,
     "failures": 3, "problem": "nothing to aggregate", "seconds": 1.0, "elapsed": 3.0},
    {"round": 3, "central_accuracy": 0.75, "central_loss": 0.875, "federated_accuracy": 0.7,
     "federated_loss": 0.9, "train_loss": np.float64(0.8), "sampled": 3, "results": 3,
     "accepted": np.int64(3), "rejected": 0, "failures": 0, "seconds": 1.25, "elapsed": 4.25},
]  # fmt: skip

# Every series the rounds above give, as (step, value): written out, not computed.
SERIES: dict[str, list[tuple[int, float]]] = {
    "central_accuracy": [(0, 0.125), (1, 0.5), (2, 0.5), (3, 0.75)],
    "central_loss": [(0, 2.25), (1, 1.5), (2, 1.5), (3, 0.875)],
    "federated_accuracy": [(1, 0.45), (3, 0.7)],
    "federated_loss": [(1, 1.75), (3, 0.9)],
    "train_loss": [(1, 1.25), (3, 0.8)],
    "sampled": [(1, 3), (2, 3), (3, 3)],
    "results": [(1, 3), (2, 0), (3, 3)],
    "accepted": [(1, 2), (2, 0), (3, 3)],
    "rejected": [(1, 1), (2, 0), (3, 0)],
    "failures": [(1, 0), (2, 3), (3, 0)],
    "seconds": [(0, 0.5), (1, 1.5), (2, 1.0), (3, 1.25)],
    "elapsed": [(0, 0.5), (1, 2.0), (2, 3.0), (3, 4.25)],
}
RESUMED_AFTER = 2  # the second process continues from round 2's checkpoint


def only(series: dict[str, list[tuple[int, float]]], steps: range) -> dict[str, Any]:
    picked = {key: [(s, v) for s, v in points if s in steps] for key, points in series.items()}
    return {key: points for key, points in picked.items() if points}


@pytest.fixture(autouse=True)
def offline_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults in force, no telemetry, and W&B's own folders in ``tmp_path``."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def config(tmp_path: Path, tracker: str, **values: Any) -> RunConfig:
    return RunConfig(tracker=tracker, output_dir=str(tmp_path), run_name="run", **values)


def track(tracker: Tracker, rounds: Sequence[dict[str, Any]], first: int = 0) -> None:
    """What the server loop does: round_done after each round (with all rounds so far)."""
    for done in range(first + 1, len(rounds) + 1):
        tracker.round_done(rounds[:done])
    tracker.run_done([], rounds)


# ---- reading back, one reader per tracker ---------------------------------------------


def tensorboard_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}
    )
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def tensorboard_texts(run_dir: Path) -> list[tuple[int, str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    return [
        (e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode())
        for e in events.Tensors("config/text_summary")
    ]


def as_float32(series: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    """TensorBoard keeps scalars as float32."""
    return {k: [(s, float(np.float32(v))) for s, v in points] for k, points in series.items()}


def mlflow_runs(output_dir: Path) -> list[Any]:
    """The runs of experiment fl-template in ``output_dir``'s store, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fl-template")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return list(runs)


def mlflow_series(output_dir: Path, run: Any) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
    }


def wandb_runs(run_dir: Path) -> list[dict[str, Any]]:
    """Each offline W&B run in ``run_dir``, oldest first: name, project, config, series, exit code.

    Read with W&B's own reader of its ``.wandb`` log, ``wandb leet inspect --json``.
    """
    runs = []
    for path in (run_dir / "wandb").glob("offline-run-*/run-*.wandb"):
        records = subprocess.run(
            [str(WANDB), "leet", "inspect", "--json", str(path)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.splitlines()
        run: dict[str, Any] = {"series": {}}
        for record in map(json.loads, records):
            if record["type"] == "run":
                info = record["run"]
                run |= {"name": info["display_name"], "project": info["project"]}
                run["start"] = info["start_time"]
                run["config"] = {
                    key: value for key, value in info["config"]["update"].items() if key != "_wandb"
                }
            elif record["type"] == "history":
                step = record["history"].get("step", {}).get("num", 0)
                for key, value in record["history"]["item"].items():
                    if not key.startswith("_"):
                        run["series"].setdefault(key, []).append((step, value))
            elif record["type"] == "exit":
                run["exit_code"] = record["exit"].get("exit_code", 0)
        runs.append(run)
    return sorted(runs, key=lambda run: run["start"])


def tensorboard_logged(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    return tensorboard_series(output_dir / "run")


def mlflow_logged(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    (run,) = mlflow_runs(output_dir)
    return mlflow_series(output_dir, run)


def wandb_logged(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    (run,) = wandb_runs(output_dir / "run")
    series: dict[str, list[tuple[int, float]]] = run["series"]
    return series


# Every series the one run "run" in an output folder logged, per tracker.
READERS: dict[str, Callable[[Path], dict[str, list[tuple[int, float]]]]] = {
    "tensorboard": tensorboard_logged,
    "mlflow": mlflow_logged,
    "wandb": wandb_logged,
}


def test_every_tracker_has_a_reader_here() -> None:
    assert set(READERS) == set(TRACKING)


# ---- each tracker ---------------------------------------------------------------------


def test_none_tracks_nothing_and_writes_nothing(tmp_path: Path) -> None:
    tracker = start_tracker(config(tmp_path, "none"), tmp_path / "run")
    track(tracker, ROUNDS)
    tracker.close(failed=True)
    assert not list(tmp_path.iterdir())


def test_tensorboard_logs_each_round_once_and_a_resumed_run_goes_on(tmp_path: Path) -> None:
    cfg = config(tmp_path, "tensorboard")
    track(start_tracker(cfg, tmp_path / "run"), ROUNDS[: RESUMED_AFTER + 1])
    time.sleep(1.1)  # event files are read in name order, and the name starts with the second
    resumed = config(tmp_path, "tensorboard", num_server_rounds=20)
    track(start_tracker(resumed, tmp_path / "run"), ROUNDS, first=RESUMED_AFTER + 1)

    assert tensorboard_series(tmp_path / "run") == as_float32(SERIES)
    texts = tensorboard_texts(tmp_path / "run")
    assert [step for step, _ in texts] == [0, RESUMED_AFTER + 1]  # each process's config
    assert "| num-server-rounds | 10 |" in texts[0][1]
    assert "| num-server-rounds | 20 |" in texts[1][1]
    assert "| tracker | 'tensorboard' |" in texts[0][1]


def test_tensorboard_hides_what_an_earlier_process_logged_from_its_first_round_on(
    tmp_path: Path,
) -> None:
    # A crashed run logged round 3 but checkpointed round 2 only; the run is resumed.
    crashed = start_tracker(config(tmp_path, "tensorboard"), tmp_path / "run")
    for done in range(1, 5):
        crashed.round_done([*ROUNDS[: done - 1], ROUNDS[done - 1] | {"central_accuracy": 0.0}])
    time.sleep(1.1)
    track(start_tracker(config(tmp_path, "tensorboard"), tmp_path / "run"), ROUNDS, first=3)
    assert tensorboard_series(tmp_path / "run")["central_accuracy"] == [
        (0, 0.0),
        (1, 0.0),
        (2, 0.0),
        (3, 0.75),
    ]
    # The folder run again from round 0: only the new run shows.
    time.sleep(1.1)
    track(start_tracker(config(tmp_path, "tensorboard"), tmp_path / "run"), ROUNDS[:2])
    assert tensorboard_series(tmp_path / "run")["central_accuracy"] == [(0, 0.125), (1, 0.5)]


def test_mlflow_logs_the_config_and_each_round_once_per_run(tmp_path: Path) -> None:
    cfg = config(tmp_path, "mlflow")
    track(start_tracker(cfg, tmp_path / "run"), ROUNDS[: RESUMED_AFTER + 1])
    resumed = config(tmp_path, "mlflow", num_server_rounds=20)
    track(start_tracker(resumed, tmp_path / "run"), ROUNDS, first=RESUMED_AFTER + 1)

    first, second = mlflow_runs(tmp_path)
    for run, run_cfg, steps in (
        (first, cfg, range(RESUMED_AFTER + 1)),
        (second, resumed, range(RESUMED_AFTER + 1, len(ROUNDS))),
    ):
        assert run.info.run_name == "run"
        assert run.info.status == "FINISHED"
        assert run.data.params == {key: str(value) for key, value in run_cfg.run_config.items()}
        assert run.data.tags["results"] == str(tmp_path / "run")
        assert mlflow_series(tmp_path, run) == only(SERIES, steps)
    assert not (Path.cwd() / "mlruns").exists()


@pytest.mark.parametrize("tracker", TRACKING)
def test_a_run_that_stops_before_its_end_is_closed_as_failed(tmp_path: Path, tracker: str) -> None:
    started = start_tracker(config(tmp_path, tracker), tmp_path / "run")
    started.round_done(ROUNDS[:1])
    started.close(failed=True)
    started.close(failed=False)  # once only
    if tracker == "mlflow":
        assert [run.info.status for run in mlflow_runs(tmp_path)] == ["FAILED"]
    elif tracker == "wandb":
        assert [run["exit_code"] for run in wandb_runs(tmp_path / "run")] == [1]
    assert READERS[tracker](tmp_path)["central_accuracy"] == [(0, 0.125)]


def test_wandb_logs_an_offline_run_with_the_config_and_each_round(tmp_path: Path) -> None:
    cfg = config(tmp_path, "wandb")
    track(start_tracker(cfg, tmp_path / "run"), ROUNDS[: RESUMED_AFTER + 1])
    resumed = config(tmp_path, "wandb", num_server_rounds=20)
    track(start_tracker(resumed, tmp_path / "run"), ROUNDS, first=RESUMED_AFTER + 1)

    first, second = wandb_runs(tmp_path / "run")
    for run, run_cfg, steps in (
        (first, cfg, range(RESUMED_AFTER + 1)),
        (second, resumed, range(RESUMED_AFTER + 1, len(ROUNDS))),
    ):
        assert (run["name"], run["project"], run["exit_code"]) == ("run", "fl-template", 0)
        assert run["config"] == run_cfg.run_config
        assert run["series"] == only(SERIES, steps)


# The module each tracker imports: "not installed" when importing it fails.
PACKAGES = {"tensorboard": "torch.utils.tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@pytest.mark.parametrize("tracker", TRACKING)
def test_a_missing_package_stops_the_run_with_one_line_naming_the_extra(
    tmp_path: Path, tracker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(PACKAGES) == set(TRACKING)
    package, real_import = PACKAGES[tracker], builtins.__import__

    def without_package(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == package or name.startswith(f"{package}."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_package)
    with pytest.raises(ConfigError) as info:
        start_tracker(config(tmp_path, tracker), tmp_path / "run")
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f"'tracker' = {tracker!r}" in message
    assert 'pip install -e ".[tracking]"' in message


def test_choosing_a_tracker_imports_no_tracking_package_until_the_run_starts() -> None:
    code = (
        "import sys\n"
        "from fl_app.kit.config import RunConfig\n"
        "import fl_app.parts.tracking\n"
        f"for name in {TRACKING!r}:\n"
        "    RunConfig(tracker=name)\n"
        "loaded = {'tensorboard', 'mlflow', 'wandb', 'torch.utils.tensorboard'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


# ---- end to end: run_simulation.py with each tracker ----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tracker", TRACKING)
def test_simulation_logs_the_central_accuracy_of_every_round(tmp_path: Path, tracker: str) -> None:
    command = [
        "run_simulation.py",
        "--tracker", tracker,
        "--num-clients", "2",
        "--num-server-rounds", "2",
        "--local-epochs", "1",
        "--output-dir", str(tmp_path),
        "--run-name", "run",
    ]  # fmt: skip
    done = run_python(command)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    history = read_history(tmp_path / "run")
    expected = [(r["round"], r["central_accuracy"]) for r in history["rounds"]]
    assert [step for step, _ in expected] == [0, 1, 2]
    logged = READERS[tracker](tmp_path)["central_accuracy"]
    if tracker == "tensorboard":
        expected = [(step, float(np.float32(value))) for step, value in expected]
    assert logged == expected


# ---- the config key ``tracker`` (the part's own, fl_app/parts/tracking.py) -------------


def test_the_key_tracker_allows_the_registered_trackers() -> None:
    for name in TRACKERS:
        assert RunConfig.from_mapping({"tracker": name}).tracker == name


@pytest.mark.parametrize("value", ["comet", "TensorBoard"])
def test_an_unknown_tracker_is_refused_with_the_allowed_ones(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"tracker": value})
    message = assert_one_line_error(info.value, "tracker", value)
    assert all(name in message for name in TRACKERS)
