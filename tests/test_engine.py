"""The engine seam (fl_app/engine): every patch of Flower's and Ray's internals is checked
before it is applied, and a seam that does not fit runs Flower's stock engine, saying so."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types

import pytest
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from ray._private import ray_constants

from fl_app import engine
from fl_app.engine import loopback
from tests.processes import ROOT


def flowers_objects() -> tuple[object, ...]:
    """What the patches replace, as Flower and Ray have them."""
    return (
        raybackend.RayBackend,
        vce_api.add_messages_to_queue,
        vce_api.Queue,
        InMemoryLinkState.store_message_ins,
        InMemoryLinkState.store_message_res,
        ray_constants.ENABLE_RAY_CLUSTER,
    )


def test_the_seam_fits_the_installed_flower_and_ray() -> None:
    assert engine.problem() is None
    touches = [t for module in engine.modules() for t in getattr(module, "TOUCHES", ())]
    assert all(touch.problem() is None for touch in touches)
    assert any(t.attribute == "ENABLE_RAY_CLUSTER" for t in touches)


@pytest.mark.parametrize(
    ("touch", "why"),
    [
        (engine.Touch("flwr.server.superlink.fleet.vce", "no_such_thing"), "is gone"),
        (engine.Touch("no.such.module", "x"), "is gone"),
        (engine.Touch(f"{vce_api.__name__}", "add_messages_to_queue", ("state",)), "is not"),
        (engine.Touch(f"{vce_api.__name__}", "start_vce", source="a line it lacks"), "no longer"),
    ],
)
def test_an_object_that_moved_is_found(touch: engine.Touch, why: str) -> None:
    problem = touch.problem()
    assert problem is not None
    assert why in problem


def test_a_module_applied_by_its_own_caller_is_checked_apart_from_the_simulation(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A module with ``SIMULATION = False`` (a patch of a process that is no simulation) is not
    the simulation's: its patch is not applied, and a change in what it touches leaves the
    simulation's patches in place; its caller checks it alone."""
    moved = engine.Touch(f"{vce_api.__name__}", "start_vce", source="a line it lacks")

    def patch(**_: object) -> None:
        raise AssertionError("a simulation applied another process's patch")

    other = types.SimpleNamespace(SIMULATION=False, TOUCHES=[moved], PATCH=patch)
    found = engine.modules()
    monkeypatch.setattr(engine, "modules", lambda: [*found, other])
    assert other not in engine.simulation()
    assert engine.problem() is None
    with caplog.at_level(logging.WARNING, logger="flwr.engine"), engine.engine() as patched:
        assert patched
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert caplog.records == []
    problem = engine.problem(modules=[other])
    assert problem is not None
    assert "no longer has 'a line it lacks'" in problem
    assert engine.problem(modules=[loopback]) is None


def test_the_loopback_patch_takes_effect_and_is_undone() -> None:
    before = flowers_objects()
    with engine.engine() as patched:
        assert patched
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        assert os.environ[loopback.SINGLE_MACHINE] == "0"  # for Ray's own processes too
    assert flowers_objects() == before
    assert loopback.SINGLE_MACHINE not in os.environ or os.environ[loopback.SINGLE_MACHINE]


def test_a_joined_cluster_is_left_as_its_owner_runs_it() -> None:
    with engine.engine(joins_ray=True):
        assert ray_constants.ENABLE_RAY_CLUSTER is True


def test_an_untested_flower_runs_the_stock_engine_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for package in engine.TESTED:  # whichever the app's patches touch (a new app's: Ray alone)
        monkeypatch.setitem(engine.TESTED, package, "0.0.1")
    before = flowers_objects()
    warnings = caplog.at_level(logging.WARNING, logger="flwr.engine")
    with warnings, engine.engine() as patched:
        assert not patched
        assert flowers_objects() == before  # nothing replaced
    (record,) = caplog.records
    assert "running Flower's stock simulation engine (the same results, slower)" in record.message
    assert "the engine seam was tested on 0.0.1" in record.message


def test_flowers_simulation_process_loads_the_client_app_with_ray_on_loopback() -> None:
    """``flwr run .`` imports the ClientApp first thing in its ``flwr-simulation`` process
    (nothing else of the app imported yet): it loads, and the Ray started next is local."""
    probe = (
        "import os, sys; sys.argv[0] = 'flwr-simulation'; import fl_app.client_app; "
        f"print(os.environ.get({loopback.SINGLE_MACHINE!r}))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", loopback.SINGLE_MACHINE)}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0"  # Ray: no cluster, the node is 127.0.0.1
