"""An app made by ``python -m fl_app.new`` works on its own, as its README says: its lint,
types, layers and quick tests pass, its default simulation trains, ``flwr run .`` trains
it, and ``flwr build`` packs its code and pyproject.toml only. (docs/extending.md's
recipes and changed defaults in such an app: tests/test_extending.py.)"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fl_app.kit.keys import pyproject_table
from tests.processes import isolated_env, read_history, run_python

pytestmark = pytest.mark.slow

LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"
FAB_BYTES = 200_000  # a new app's FAB at most (docs/template.md)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    destination = tmp_path_factory.mktemp("new") / "my-app"
    done = run_python(["-m", "fl_app.new", str(destination), "--name", "my-app"], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return destination


def passes(app: Path, *arguments: str, timeout: float = 600) -> str:
    done = run_python(list(arguments), timeout, cwd=app)
    assert done.returncode == 0, f"{arguments}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def mypy(factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """mypy's command for a new app, its cache shared by this session's apps (the libraries'
    types are read once)."""
    return ("-m", "mypy", "--cache-dir", str(factory.getbasetemp() / "mypy-cache"))


def test_its_lint_types_layers_and_quick_tests_pass(
    app: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    passes(app, "-m", "ruff", "check", ".")
    passes(app, "-m", "ruff", "format", "--check", ".")
    passes(app, *mypy(tmp_path_factory))
    passes(app, "-c", LINT_IMPORTS)
    quick = passes(app, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow")
    assert " passed" in quick.splitlines()[-1], quick[-500:]


def test_its_default_simulation_trains(app: Path) -> None:
    defaults = pyproject_table(app / "pyproject.toml")
    passes(app, "run_simulation.py", "--output-dir", str(app / "outputs"), "--run-name", "run")
    rounds = read_history(app / "outputs" / "run")["rounds"]
    assert [r["round"] for r in rounds] == list(range(defaults["num-server-rounds"] + 1))
    assert [r["failures"] for r in rounds[1:]] == [0] * defaults["num-server-rounds"]
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.3


def test_flwr_run_trains_it_and_flwr_build_packs_its_code_only(app: Path) -> None:
    # Its own end-to-end test of `flwr run .`: the run trains, Flower's processes listen
    # on loopback only, and the local SuperLink is stopped by PID.
    passes(app, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_flwr_run.py")
    with isolated_env() as env:
        flwr = str(Path(sys.executable).with_name("flwr"))
        built = subprocess.run(
            [flwr, "build"], cwd=app, env=env, capture_output=True, text=True, timeout=120
        )
    assert built.returncode == 0, built.stdout + built.stderr
    (fab,) = app.glob("*.fab")
    assert fab.stat().st_size <= FAB_BYTES, fab.stat().st_size
    names = zipfile.ZipFile(fab).namelist()
    packed = {name for name in names if not name.startswith(".info/")}
    assert "pyproject.toml" in packed
    assert {"fl_app/task.py", "fl_app/client_app.py", "fl_app/server_app.py"} <= packed
    assert all(n == "pyproject.toml" or n.startswith(("fl_app/", "strategies/")) for n in packed)
    assert all(n.endswith((".py", ".toml")) for n in packed)
