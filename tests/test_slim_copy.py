"""Start your own app from this template: a copy without any optional part still works.

The test copies the project, deletes every part of fl_app/parts/__init__.py (its files and its
registration lines, those ending in ``# part: <name>``), regenerates the pyproject's
config table, and then, in the copy: the quick tests pass, the default simulation trains
on both Flower API halves, and a key of a deleted part is refused in one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fl_app.parts import PARTS, registered_part
from tests.processes import ROOT, run_python

pytestmark = pytest.mark.slow


def slim_copy(destination: Path) -> Path:
    """The project's files (as git sees them) in ``destination``, less every optional part."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    for part in PARTS.values():
        for path in part.files:
            target = destination / path
            assert target.exists(), (
                f"{path} is listed in fl_app/parts/__init__.py but not in the project"
            )
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    for path in destination.rglob("*.py"):
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if registered_part(line) is None]
        if kept != lines:
            path.write_text("".join(kept))
    return destination


def test_a_copy_without_the_optional_parts_tests_and_trains(tmp_path: Path) -> None:
    copy = slim_copy(tmp_path / "app")
    assert not (copy / "fl_app" / "tracking.py").exists()
    assert not (copy / "scripts").exists()

    regenerated = run_python(["-m", "fl_app.kit.config", "--write"], timeout=60, cwd=copy)
    assert regenerated.returncode == 0, regenerated.stderr
    assert "tracker =" not in (copy / "pyproject.toml").read_text()

    quick = run_python(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-x"],
        timeout=300,
        cwd=copy,
    )
    assert quick.returncode == 0, quick.stdout[-3000:] + quick.stderr[-2000:]
    assert " passed" in quick.stdout.splitlines()[-1], quick.stdout[-500:]

    for api in ("legacy", "message"):
        flags = ["--flower-api", api, "--num-server-rounds", "2", "--fraction-evaluate", "0"]
        where = ["--output-dir", str(tmp_path / "outputs"), "--run-name", api]
        done = run_python(["run_simulation.py", *flags, *where], timeout=180, cwd=copy)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        history = json.loads((tmp_path / "outputs" / api / "history.json").read_text())
        accuracy = [r["central_accuracy"] for r in history["rounds"]]
        assert len(accuracy) == 3, api  # round 0 and the two rounds
        assert accuracy[-1] > accuracy[0] + 0.2, (api, accuracy)
        assert all(r["accepted"] == 10 for r in history["rounds"][1:]), api

    refused = run_python(["run_simulation.py", "--tracker", "tensorboard"], timeout=60, cwd=copy)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "'tracker' belongs to the optional part 'tracking'" in line, line
    assert "this copy of the template does not have" in line, line
