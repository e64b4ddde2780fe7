"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

from tests.halves import API_FLAGS, HALVES
from tests.processes import ON_RAY, SHARED_CLIENTS, SHARED_ROUNDS, simulate

pytest_plugins = ["tests.deployments"]  # part: deployment-scripts


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep each module on one xdist worker (its module fixtures are made once), and every
    user of ``shared_runs`` on the same one (the runs are made once); hand out the modules
    with end-to-end runs first, so the long ones do not start last and run alone."""
    groups = {
        item: "shared_runs"
        if "shared_runs" in getattr(item, "fixturenames", ())
        else item.nodeid.split("::")[0]
        for item in items
    }
    slow = {groups[item] for item in items if item.get_closest_marker("slow")}
    first_seen = {group: index for index, group in reversed(list(enumerate(groups.values())))}
    items.sort(key=lambda item: (groups[item] not in slow, first_seen[groups[item]]))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item]))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models train faster on one intra-op thread on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task_identity() -> Iterator[None]:
    """What a Flower runtime sets before any Message is built (tests build them by hand)."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(params=list(HALVES))
def half(request: pytest.FixtureRequest, task_identity: None) -> Any:
    """Each Flower API half this copy has, handing the same updates to its strategy."""
    return HALVES[request.param]


@pytest.fixture(scope="session")
def shared_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str, str], dict[str, Any]]:
    """Each strategy's run on each Flower API half, on Ray: run when a test first asks for
    it and shared by every test module that checks or compares against it."""
    runs: dict[tuple[str, str], dict[str, Any]] = {}

    def run(strategy: str, api: str) -> dict[str, Any]:
        if (strategy, api) not in runs:
            runs[strategy, api] = simulate(
                tmp_path_factory.mktemp(f"{strategy}-{api}"),
                "--strategy", strategy, *API_FLAGS[api], *ON_RAY,
                "--num-clients", str(SHARED_CLIENTS), "--num-server-rounds", str(SHARED_ROUNDS),
            )  # fmt: skip
        return runs[strategy, api]

    return run
