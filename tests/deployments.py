"""What the deployment tests share (a pytest plugin: tests/conftest.py): the app they submit,
the environment they start a deployment in, and how they wait for a run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts import local_deployment as ld
from tests.processes import ROOT, TAG_VARIABLE, isolated_env, leftovers, read_history

# Federated evaluation off: each phase of a deployment round costs seconds (the
# SuperNodes' 3 s polls; under Flower's subprocess isolation a process start as well).
FAST = "fraction-evaluate=0.0 min-evaluate-clients=0"


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    with isolated_env() as environment:
        yield environment
        # Before isolated_env stops whatever is left: ld.down must have stopped it all.
        assert leftovers(environment[TAG_VARIABLE]) == []


def history_of(deployment: ld.Deployment, run_name: str) -> dict[str, Any]:
    # A relative output-dir lands beside the SuperLink, in the deployment's folder.
    return read_history(Path(deployment.directory) / "outputs" / run_name)


def run_to_completion(
    deployment: ld.Deployment, env: dict[str, str], run_config: str, app: Path
) -> str:
    run_id = ld.submit(deployment, app, run_config, env=env)
    return ld.wait_for_run(deployment, run_id, env=env, timeout=400)


def copy_app(destination: Path) -> Path:
    """The project's files in ``destination`` without the folders `flwr run` walks through only
    to leave them out (a virtual environment: tens of thousands of files, seconds of every
    `flwr run` from the project root); `flwr run` packs the copy into the same FAB."""

    def left_out(folder: str, names: list[str]) -> set[str]:
        return {
            name
            for name in names
            if name in {".git", "__pycache__", "outputs"}
            or name.endswith("_cache")
            or (Path(folder, name) / "pyvenv.cfg").is_file()
        }

    shutil.copytree(ROOT, destination, ignore=left_out, symlinks=True)
    return destination


@pytest.fixture(scope="session")
def app_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as `flwr run` packs it, for the tests that submit it to a deployment."""
    return copy_app(tmp_path_factory.mktemp("app") / "app")
