"""The recipes of docs/extending.md ("Extending the template"), applied to a copy of the
project and run.

The code blocks of that page say where they go in their first line
(``# path: a new file``, ``# path: add after "anchor"``, ``# path: add before "anchor"``);
this test applies them as written, counts the files they touch, and trains with the new
strategy, model and dataset together on both Flower API halves.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.halves import API_FLAGS
from tests.processes import ROOT, read_history, run_python

pytestmark = pytest.mark.slow

# The whole page is the recipes: its title, then everything to the end (its own headings are
# `## Add ...`; a `# ` line may be a comment inside a code block, so it cannot end the match).
PAGE = ROOT / "docs" / "extending.md"
SECTION = re.compile(r"\A# Extending the template\n(.*)\Z", re.S)
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
WHERE = re.compile(r'^# (\S+): (a new file|add after "(.*)"|add before "(.*)")$')


def recipes() -> list[tuple[str, str, str, str]]:
    """(path, how, anchor, code) of every code block of the extending page."""
    match = SECTION.search(PAGE.read_text())
    assert match is not None
    found = []
    for block in BLOCK.findall(match.group(1)):
        first, _, code = block.partition("\n")
        where = WHERE.match(first)
        assert where is not None, f"a block without a place: {first!r}"
        path, how = where.group(1), where.group(2).split(' "')[0]
        found.append((path, how, where.group(3) or where.group(4) or "", code))
    return found


def apply(copy: Path, path: str, how: str, anchor: str, code: str) -> None:
    target = copy / path
    if how == "a new file":
        assert not target.exists(), path
        target.write_text(code)
        return
    lines = target.read_text().splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if line.startswith(anchor)]
    assert len(at) == 1, f"{path}: {len(at)} lines start with {anchor!r}"
    insert = at[0] + 1 if how == "add after" else at[0]
    padding = "" if how == "add after" else "\n\n"
    lines[insert:insert] = [code + padding]
    target.write_text("".join(lines))


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with the extending page's strategy, model and dataset added."""
    copy = tmp_path_factory.mktemp("extended")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in listed:
        if name.startswith(("fl_app/", "strategies/")) or name in (
            "run_simulation.py",
            "pyproject.toml",
        ):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    for path, how, anchor, code in recipes():
        apply(copy, path, how, anchor, code)
    return copy


def test_the_recipes_touch_the_files_the_page_counts() -> None:
    touched: dict[str, set[str]] = {}
    for path, _, _, code in recipes():
        kind = "strategy" if path.startswith("strategies/") else path
        touched.setdefault(kind, set()).add(path)
        assert code.strip()
    assert touched == {
        "strategy": {"strategies/sqrt_weighted.py", "strategies/__init__.py"},
        "fl_app/models.py": {"fl_app/models.py"},
        "fl_app/data.py": {"fl_app/data.py"},
    }


@pytest.mark.parametrize("api", list(API_FLAGS))
def test_the_new_strategy_model_and_dataset_train_together(extended: Path, api: str) -> None:
    out = extended / "outputs"
    done = run_python(
        [
            "run_simulation.py", "--output-dir", str(out), "--run-name", api,
            "--strategy", "sqrt", "--model", "tiny", "--dataset", "blobs", *API_FLAGS[api],
            "--num-clients", "3", "--num-server-rounds", "3", "--local-epochs", "1",
        ],
        cwd=extended,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    history = read_history(out / api)
    assert (history["config"]["strategy"], history["config"]["model"]) == ("sqrt", "tiny")
    rounds = history["rounds"]
    assert [r["accepted"] for r in rounds[1:]] == [3, 3, 3]
    weights = sorted(json.loads(rounds[1]["weights"]).values())
    # IID shards of 700 pooled rows, 10 % of each kept for validation: 210, 210, 211
    # training examples; √n weights differ from n-proportional ones in the 4th digit.
    sqrt_n = [210**0.5, 210**0.5, 211**0.5]
    assert weights == pytest.approx([w / sum(sqrt_n) for w in sqrt_n], abs=1e-6)
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.3


def test_the_copy_refuses_what_the_new_entries_do_not_allow(extended: Path) -> None:
    # The new model is a vector model, the new dataset vectors: the config's own rules
    # apply to them with no edit to the config.
    done = run_python(
        ["run_simulation.py", "--dataset", "blobs", "--model", "cnn", "--num-server-rounds", "1"],
        cwd=extended,
    )
    assert done.returncode == 2
    assert "config 'model' = 'cnn' is not allowed" in done.stderr
    assert "tiny" in done.stderr  # the new model is among the allowed ones
