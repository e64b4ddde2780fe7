"""The recipes of docs/extending.md, applied as written to an app made by ``python -m
fl_app.new``: its quick tests, lint and types still pass, and it trains with the new rules,
model and dataset, which the page's last block makes its defaults.

Each block of that page says where it goes in its first line (``# path: a new file``,
``# path: add after "anchor"``, ``# path: add before "anchor"``, ``# path: set in
[table]``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.processes import ROOT, read_history, run_python
from tests.test_new import mypy

pytestmark = pytest.mark.slow

PAGE = ROOT / "docs" / "extending.md"
BLOCK = re.compile(r"^```(?:python|toml)\n(.*?)^```", re.S | re.M)
WHERE = re.compile(r'^# (\S+): (a new file|add after "(.*)"|add before "(.*)"|set in (\[.*\]))$')


def recipes() -> list[tuple[str, str, str, str]]:
    """(path, how, anchor, code) of every block of the page, in order."""
    found = []
    for block in BLOCK.findall(PAGE.read_text()):
        first, _, code = block.partition("\n")
        where = WHERE.match(first)
        assert where is not None, f"a block without a place: {first!r}"
        path, how = where.group(1), where.group(2).split(' "')[0].split(" [")[0]
        found.append((path, how, where.group(3) or where.group(4) or where.group(5) or "", code))
    return found


def apply(app: Path, path: str, how: str, anchor: str, code: str) -> None:
    target = app / path
    if how == "a new file":
        assert not target.exists(), path
        target.write_text(code)
        return
    text = target.read_text()
    if how == "set in":  # each `key = value` replaces the key's line in that table
        assert anchor in text, anchor
        for line in code.splitlines():
            key = line.split(" = ")[0]
            text, found = re.subn(rf"(?m)^{re.escape(key)} = .*$", line, text)
            assert found == 1, f"{path}: {found} lines set {key}"
        target.write_text(text)
        return
    lines = text.splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if line.startswith(anchor)]
    assert len(at) == 1, f"{path}: {len(at)} lines start with {anchor!r}"
    insert = at[0] + 1 if how == "add after" else at[0]
    lines[insert:insert] = [code + ("" if how == "add after" else "\n\n")]
    target.write_text("".join(lines))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new app (no optional part) with every recipe of the page applied."""
    app = tmp_path_factory.mktemp("extended") / "extended"
    made = run_python(["-m", "fl_app.new", str(app)], timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    for recipe in recipes():
        apply(app, *recipe)
    return app


def in_app(app: Path, *arguments: str) -> str:
    done = run_python(list(arguments), cwd=app)
    assert done.returncode == 0, f"{arguments}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def test_the_recipes_touch_the_files_the_page_says() -> None:
    touched = {path for path, *_ in recipes()}
    assert touched == {
        "strategies/sqrt_weighted.py",
        "strategies/median.py",
        "strategies/__init__.py",
        "fl_app/task.py",
        "pyproject.toml",
    }


def test_the_apps_quick_tests_lint_and_types_pass_with_the_recipes(
    app: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    in_app(app, "-m", "ruff", "check", ".")
    in_app(app, *mypy(tmp_path_factory))
    quick = in_app(app, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow")
    assert " passed" in quick.splitlines()[-1], quick[-500:]


def test_the_new_defaults_train(app: Path) -> None:
    """No flag: the defaults the page set (the median, the new model and dataset, more
    clients on Dirichlet partitions, fewer rounds) are what runs."""
    in_app(app, "run_simulation.py", "--output-dir", str(app / "outputs"), "--run-name", "run")
    history = read_history(app / "outputs" / "run")
    set_in_page = dict(
        line.split(" = ") for *_, code in recipes()[-1:] for line in code.split("\n") if line
    )
    config = history["config"]
    assert {k: json.dumps(config[k]) for k in set_in_page} == set_in_page
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == list(range(config["num-server-rounds"] + 1))
    assert [r["accepted"] for r in rounds[1:]] == [config["num-clients"]] * config[
        "num-server-rounds"
    ]
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.3


def test_the_rules_compute_what_their_recipes_say(app: Path) -> None:
    """The app's own code on three updates: √n weights, and the coordinate-wise median."""
    probe = """
import json
import numpy as np
import strategies
from strategies.core.codec import encode_tensors
from strategies.core.update import ClientUpdate

layers = [[1.0, -5.0], [2.0, 0.0], [9.0, 1.0]]
counts = [1, 4, 9]
out = {}
for name in ("sqrt", "median"):
    rule = strategies.build(name).rule
    updates = [
        ClientUpdate(str(i), encode_tensors([np.array(layer, np.float32)]), n, {})
        for i, (layer, n) in enumerate(zip(layers, counts))
    ]
    result = rule.aggregate(1, updates, [])
    out[name] = {"model": result.arrays[0].tolist(), "weights": json.loads(result.metrics["weights"])}
print(json.dumps(out))
"""
    got = json.loads(in_app(app, "-c", probe))
    sqrt_n = [1.0, 2.0, 3.0]
    assert got["sqrt"]["weights"] == {
        str(i): pytest.approx(w / 6, abs=1e-6) for i, w in enumerate(sqrt_n)
    }
    assert got["sqrt"]["model"] == pytest.approx([(1 + 4 + 27) / 6, (-5 + 0 + 3) / 6])
    assert got["median"]["model"] == [2.0, 0.0]


def test_the_config_refuses_a_model_it_does_not_know_and_lists_the_new_one(app: Path) -> None:
    done = run_python(["run_simulation.py", "--model", "nope", "--num-server-rounds", "1"], cwd=app)
    assert done.returncode == 2
    assert "config 'model' = 'nope' is not allowed" in done.stderr
    assert "tiny" in done.stderr
