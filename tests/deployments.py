"""What the deployment tests share: the app they submit (a pytest plugin: tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.processes import ROOT


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
