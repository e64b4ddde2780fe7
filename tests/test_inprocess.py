"""The in-process backend hands each ClientApp call what a Ray actor would get."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.server.superlink.fleet.vce.backend import BackendConfig

import run_simulation
from fl_app.engine.inprocess import InProcessBackend
from tests.halves import API_FLAGS
from tests.processes import IN_PROCESS, SHARED_CLIENTS, SHARED_ROUNDS, simulate, without_timings


@pytest.mark.usefixtures("task_identity")
def test_an_app_that_changes_its_message_leaves_the_senders_alone() -> None:
    """Flower's SecAgg+ client mod pops the ``stage`` key of the ConfigRecord it gets, and
    the server's workflow sends one ConfigRecord to every node: each call must see it whole."""
    app = ClientApp()
    seen: list[str] = []

    @app.train()
    def train(message: Message, context: Context) -> Message:
        seen.append(str(message.content.config_records["config"].pop("stage")))
        return Message(RecordDict(), reply_to=message)

    shared = RecordDict({"config": ConfigRecord({"stage": "setup"})})
    backend = InProcessBackend(BackendConfig())
    backend.build(lambda: app)
    for node_id in (1, 2):
        message = Message(shared, dst_node_id=node_id, message_type="train")
        context = Context(
            run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={}
        )
        backend.process_message(message, context)
    assert seen == ["setup", "setup"]
    assert shared.config_records["config"]["stage"] == "setup"


@pytest.mark.slow
@pytest.mark.parametrize("api", list(API_FLAGS))
def test_clients_in_this_process_give_the_ray_runs_results_bit_for_bit(
    shared_runs: Callable[[str, str], dict[str, Any]], tmp_path: Path, api: str
) -> None:
    on_ray = shared_runs("hybrid", api)
    here = simulate(
        tmp_path, *IN_PROCESS, "--strategy", "hybrid", *API_FLAGS[api],
        "--num-clients", str(SHARED_CLIENTS), "--num-server-rounds", str(SHARED_ROUNDS),
    )  # fmt: skip
    assert without_timings(here) == without_timings(on_ray)
    mine, theirs = (torch.load(Path(r["directory"]) / "final_model.pt") for r in (here, on_ray))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert here["sockets"] == set()  # no Ray: nothing listens at all
    assert {"gcs_server", "raylet"} <= {command for _, _, command in on_ray["sockets"]}


@pytest.mark.parametrize(
    ("cpus", "flags", "backend"),
    [
        (2, [], "inprocess"),  # 2 clients at a time: Ray's start and dispatch do not pay
        (3, [], "inprocess"),
        (4, [], "ray"),
        (8, ["--num-cpus", "2"], "ray"),
        (8, ["--num-cpus", "4"], "inprocess"),
        (2, ["--num-gpus", "0.5"], "ray"),  # only Ray places clients on GPUs
        (2, ["--ray-address", "127.0.0.1:6379"], "ray"),  # part: ray-cluster
        (2, ["--fault-kind", "straggle", "--fault-fraction", "0.2"], "ray"),  # part: faults
        (16, ["--backend", "inprocess"], "inprocess"),  # asked for: kept
        (2, ["--backend", "ray"], "ray"),
    ],
)
def test_the_auto_backend_runs_ray_where_clients_side_by_side_pay(
    monkeypatch: pytest.MonkeyPatch, cpus: int, flags: list[str], backend: str
) -> None:
    monkeypatch.setattr(run_simulation.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert run_simulation.parse(flags).simulation.backend == backend
