"""A run's folder, ``output-dir/<run-name>/``: ``config.json`` at start, ``history.json`` and
``metrics.csv`` after every round (atomically: an interrupted run keeps what it did) and
``final_model.pt`` (a torch ``state_dict``) at the end; optional parts may add files."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from fl_app.kit.files import atomic_file, json_default
from fl_app.kit.keys import fail

RoundRecord = dict[str, Any]  # one flat record per round: fl_app.kit.rounds.RoundRecorder
NDArrays = list[NDArray[Any]]


class RunListener:
    """Told of each finished round (round 0: the initial model's evaluation), of the final global
    model after the last one, and that the run ended (after ``run_done``, or instead: it stopped).
    ``rounds`` is the server's own list (a resumed run's earlier rounds too): no need to copy it."""

    def round_done(self, rounds: Sequence[RoundRecord]) -> None: ...

    def run_done(self, parameters: NDArrays, rounds: Sequence[RoundRecord]) -> None: ...

    def stopped(self) -> None: ...


def format_round(record: RoundRecord, num_rounds: int | None = None) -> str:
    """One human-readable line for a round: what its record has of these."""
    r, of = record, f"/{num_rounds}" if num_rounds else ""
    failed = f"{r.get('failures', 0)} failed, {r.get('rejected', 0)} rejected"
    parts = [
        f"round {r['round']:>3}{of}",
        f"accuracy {r['central_accuracy']:.4f}" if "central_accuracy" in r else "",
        f"loss {r['central_loss']:.4f}" if "central_loss" in r else "",
        f"clients {r.get('accepted', 0)}/{r['sampled']} ({failed})" if "sampled" in r else "",
        f"ε {r['epsilon']:.3g}" if "epsilon" in r else "",  # part: dp
        f"{r['seconds']:.2f} s" if "seconds" in r else "",
        f"\n  {r['problem']}" if "problem" in r else "",
    ]
    return "  ".join(part for part in parts if part)


# metrics.csv, one row per round (round 0: the initial model).
METRICS_COLUMNS = (
    "round",
    "central_accuracy",  # server test set
    "central_loss",
    "federated_accuracy",  # clients' validation splits, example-weighted
    "federated_loss",
    "train_loss",  # clients' last-epoch training loss, example-weighted
    "sampled",  # clients asked to train
    "results",  # updates received
    "failures",  # clients that raised or timed out
    "epsilon",  # part: dp
    "rejected",  # updates refused by validation
    "seconds",  # wall time of the round
    "elapsed",  # wall time since the run started
)


def run_directory(cfg: Any) -> Path:
    """``output-dir/<run-name>`` as an absolute path (run-name defaults to strategy-time), made
    if need be; one line if this process cannot write there."""
    name = cfg.run_name or f"{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    directory = (Path(cfg.output_dir).expanduser() / name).resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail("output-dir", cfg.output_dir, f"a folder this process can write ({err.strerror})")
    return directory


def write_text_atomically(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_json_atomically(path: Path, payload: Any) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2, default=json_default))


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def summarize(rounds: Sequence[RoundRecord]) -> dict[str, Any]:
    """Final and best central accuracy (None for regression) and loss, rounds and wall time."""
    accuracies = [r["central_accuracy"] for r in rounds if finite(r.get("central_accuracy"))]
    losses = [r["central_loss"] for r in rounds if finite(r.get("central_loss"))]
    epsilons = [r["epsilon"] for r in rounds if "epsilon" in r]  # part: dp
    nodes = sorted({n for r in rounds for n in r.get("ray_nodes", ())})  # part: ray-cluster
    return {
        "rounds": max((r["round"] for r in rounds), default=0),
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "final_loss": losses[-1] if losses else None,
        "best_loss": min(losses) if losses else None,
        "seconds": rounds[-1]["elapsed"] if rounds else 0.0,
        "ray_nodes": nodes,  # part: ray-cluster
        "epsilon": epsilons[-1] if epsilons else None,  # part: dp
    }


def describe(summary: Mapping[str, Any]) -> str:
    """One line: the headline metric (accuracy, or loss for regression) and the time."""
    metric = "accuracy" if summary["final_accuracy"] is not None else "loss"
    final, best = summary[f"final_{metric}"], summary[f"best_{metric}"]
    headline = f"final {metric} {final:.4f}, best {best:.4f}"
    line = f"{headline}, {summary['rounds']} rounds in {summary['seconds']:.1f} s"
    if len(summary.get("ray_nodes", ())) > 1:  # part: ray-cluster
        line += f" on {len(summary['ray_nodes'])} Ray nodes"  # part: ray-cluster
    if summary.get("epsilon") is not None:  # part: dp
        line += f", privacy spent ε = {summary['epsilon']:.3g}"  # part: dp
    return line


class RunWriter(RunListener):
    """Keeps a run's folder up to date: config, then history and metrics, then the model."""

    def __init__(self, cfg: Any, directory: Path, save_model: Callable[[NDArrays, Path], None]):
        self.cfg, self.directory, self.save_model = cfg, directory, save_model
        write_json_atomically(directory / "config.json", cfg.run_config)

    def round_done(self, rounds: Sequence[RoundRecord]) -> None:
        history = {"config": self.cfg.run_config, "rounds": rounds, "summary": summarize(rounds)}
        write_json_atomically(self.directory / "history.json", history)
        with atomic_file(self.directory / "metrics.csv") as f:
            rows = csv.DictWriter(f, METRICS_COLUMNS, extrasaction="ignore", lineterminator="\n")
            rows.writeheader()
            rows.writerows(rounds)

    def run_done(self, parameters: NDArrays, rounds: Sequence[RoundRecord]) -> None:
        self.save_model(parameters, self.directory / "final_model.pt")
