"""Experiment tracking: each round's numbers in TensorBoard, MLflow or Weights & Biases.

Off by default (``tracker = "none"``). A tracker is a :class:`~fl_app.kit.results.RunListener`
that the ServerApp adds beside the results files (``run_simulation.py`` and ``flwr run``
alike): after every round it logs the finite numbers of the newest round record
(``central_accuracy``, ``central_loss``, ``federated_*``, ``train_loss``, ``sampled``,
``accepted``, ``rejected``, ``failures``, ``seconds`` ...) at step = the round, and the
run config once. A resumed run logs only the rounds it runs itself.

- ``tensorboard``: event files in ``<run dir>/tensorboard/`` (``tensorboard --logdir``);
  a resumed run continues the same curves.
- ``mlflow``: a run named after the run folder in experiment ``fl-template``
  (``MLFLOW_EXPERIMENT_NAME``), in ``MLFLOW_TRACKING_URI`` if set, else in the SQLite
  store ``<output-dir>/mlflow.db`` (MLflow 3 refuses its old ``./mlruns`` file store).
- ``wandb``: a Weights & Biases run in ``<run dir>/wandb/``, offline unless
  ``WANDB_MODE`` says otherwise (``wandb sync`` uploads it later).

The packages are optional (``pip install -e ".[tracking]"``) and imported only when their
tracker is chosen; a missing one stops the run at start with one line saying so.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from fl_app.kit.keys import ConfigError, keys, option
from fl_app.kit.results import NDArrays, RoundRecord, RunListener

INSTALL = 'pip install -e ".[tracking]"'
EXPERIMENT = "fl-template"


def round_metrics(record: RoundRecord) -> dict[str, float]:
    """The finite numbers of a round record, except its round (the step) and booleans."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "round"
        and isinstance(value, Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def missing(tracker: str, package: str) -> ConfigError:
    return ConfigError(
        f"config 'tracker' = {tracker!r} needs the package {package}, which is not "
        f"installed: {INSTALL}"
    )


class Tracker(RunListener):
    """Logs the newest round's numbers at step = round; ends the tracked run exactly once.

    The base class tracks nothing (``tracker = "none"``). A subclass implements
    ``log_round`` and ``end``. ``close`` ends a run that stopped before ``run_done`` (an
    error): the ServerApp calls it whatever happened.
    """

    def __init__(self) -> None:
        self.closed = False

    def round_done(self, rounds: Sequence[RoundRecord]) -> None:
        # ``rounds`` starts with a resumed run's earlier rounds: the run that ran them logged them.
        record = rounds[-1]
        self.log_round(int(record["round"]), round_metrics(record))

    def run_done(self, parameters: NDArrays, rounds: Sequence[RoundRecord]) -> None:
        self.close(failed=False)

    def stopped(self) -> None:
        self.close(failed=True)  # nothing after run_done: only a run that stopped fails

    def close(self, *, failed: bool) -> None:
        if not self.closed:
            self.closed = True
            self.end(failed=failed)

    def log_round(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` of round ``step``."""

    def end(self, *, failed: bool) -> None:
        """Flush and end the tracked run."""


def config_table(config: Mapping[str, Any]) -> str:
    """The run config as a Markdown table (TensorBoard's text plugin renders Markdown)."""
    rows = [f"| {key} | {value!r} |" for key, value in config.items()]
    return "\n".join(["| key | value |", "| --- | --- |", *rows])


class TensorBoardTracker(Tracker):
    """Scalars per round in ``<run dir>/tensorboard/``; the config as text at the first step.

    The writer starts at the first round this process logs, with ``purge_step`` there:
    TensorBoard then hides whatever an earlier process logged from that round on (a run
    folder run again, or rounds a crashed run logged after its last checkpoint).
    """

    def __init__(self, cfg: Any, directory: Path) -> None:
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch raises it when tensorboard is missing
            raise missing(cfg.tracker, "tensorboard") from err
        self.summary_writer = SummaryWriter
        self.cfg = cfg
        self.log_dir = directory / "tensorboard"
        self.writer: Any = None

    def log_round(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            self.writer = self.summary_writer(log_dir=str(self.log_dir), purge_step=step)
            self.writer.add_text("config", config_table(self.cfg.run_config), global_step=step)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # a live `tensorboard` sees the round; a crash loses nothing

    def end(self, *, failed: bool) -> None:
        if self.writer is not None:
            self.writer.close()


class MlflowTracker(Tracker):
    """One MLflow run per process: the config as params, each round's numbers as metrics."""

    def __init__(self, cfg: Any, directory: Path) -> None:
        super().__init__()
        # Like Flower's telemetry here: off unless the user turns it on.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            from mlflow.entities import Metric, Param, RunStatus
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise missing(cfg.tracker, "mlflow-skinny (or mlflow)") from err
        self.metric = Metric
        self.run_status = RunStatus
        output_dir = Path(cfg.output_dir).expanduser().resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{output_dir / 'mlflow.db'}"
        output_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # MLflow's SQL store uses a loader SQLAlchemy 2.1 deprecates: not ours to fix.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.")
            self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            # Artifacts (none logged here) would otherwise go to ./mlruns of the current folder.
            else self.client.create_experiment(
                name, artifact_location=(output_dir / "mlartifacts").as_uri()
            )
        )
        run = self.client.create_run(
            experiment_id,
            run_name=cfg.run_name or directory.name,
            tags={"results": str(directory)},
        )
        self.run_id: str = run.info.run_id
        params = [Param(key, str(value)) for key, value in cfg.run_config.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_round(self, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[self.metric(key, value, now, step) for key, value in metrics.items()],
        )

    def end(self, *, failed: bool) -> None:
        status = self.run_status.FAILED if failed else self.run_status.FINISHED
        self.client.set_terminated(self.run_id, self.run_status.to_string(status))


class WandbTracker(Tracker):
    """A Weights & Biases run in ``<run dir>/wandb/``, offline unless ``WANDB_MODE`` is set."""

    def __init__(self, cfg: Any, directory: Path) -> None:
        super().__init__()
        try:
            import wandb
        except ImportError as err:
            raise missing(cfg.tracker, "wandb") from err
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or EXPERIMENT,
            name=cfg.run_name or directory.name,
            config=cfg.run_config,
            dir=directory,
            mode=None if os.environ.get("WANDB_MODE") else "offline",  # None: wandb reads it
            # Its console capture would rewire this process's stdout (the progress display).
            settings=wandb.Settings(console="off"),
            reinit="create_new",  # a comparison runs several in one process
        )

    def log_round(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def end(self, *, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


TrackerFactory = Callable[[Any, Path], Tracker]

# name -> factory(cfg, run directory); the config key ``tracker`` allows these names.
TRACKERS: dict[str, TrackerFactory] = {
    "none": lambda cfg, directory: Tracker(),
    "tensorboard": TensorBoardTracker,
    "mlflow": MlflowTracker,
    "wandb": WandbTracker,
}


def start_tracker(cfg: Any, directory: Path) -> Tracker:
    """The tracker ``cfg.tracker`` names, for the run in ``directory``."""
    return TRACKERS[cfg.tracker](cfg, directory)


@keys
class TrackingKeys:
    tracker: str = option(
        "experiment tracking of each round's metrics: tensorboard (<run dir>/tensorboard), "
        "mlflow (<output-dir>/mlflow.db), wandb (offline, <run dir>/wandb); "
        'needs pip install -e ".[tracking]"',
        choices=tuple(TRACKERS),
    )

    def part_listeners(self, directory: Path) -> list[RunListener]:
        """The tracker ``tracker`` names, besides the other parts' listeners."""
        listeners: list[RunListener] = super().part_listeners(directory)  # type: ignore[misc]
        return [*listeners, start_tracker(self, directory)]
