"""The optional parts (fl_app/parts/__init__.py): each is reached only through its registration
lines, its keys are its own, and a key or flag of a part that is gone is one clear line."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from fl_app import new, parts
from fl_app.kit.config import CoreKeys, RunConfig, key_of
from tests.processes import ROOT

SKIPPED = {"outputs", "data", "site"}  # and hidden ones: .git, venvs (.venv-pfl), caches


def python_files() -> list[Path]:
    tops = [top for top in ROOT.iterdir() if not (top.name in SKIPPED or top.name[0] == ".")]
    return sorted(
        path
        for top in tops
        for path in ([top] if top.is_file() else top.rglob("*.py"))
        if path.suffix == ".py"
    )


def part_of(path: Path) -> str | None:
    relative = path.relative_to(ROOT).as_posix()
    for name, part in parts.PARTS.items():
        if any(relative == f or relative.startswith(f"{f}/") for f in part.files):
            return name
    return None


def module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


# Every module of every part: what the rest may import on registration lines only.
PART_MODULES = {
    module_of(path.relative_to(ROOT).as_posix()): name
    for path in python_files()
    if (name := part_of(path)) is not None
}


def imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def test_the_rest_reaches_a_part_only_on_its_registration_lines() -> None:
    outside = []
    for path in python_files():
        if part_of(path) is not None:
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for module in imported(node):
                name = PART_MODULES.get(module)
                if name and parts.registered_part(lines[node.lineno - 1]) != name:
                    outside.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {module}")
    assert outside == []


def with_dependents(name: str) -> set[str]:
    """``name`` and every part that builds on it: what goes when it goes."""
    gone = {name}
    while more := {n for n, p in parts.PARTS.items() if gone & set(p.requires)} - gone:
        gone |= more
    return gone


@pytest.mark.parametrize("name", sorted(parts.PARTS))
def test_the_code_without_a_part_still_parses(name: str) -> None:
    """A part's marked lines are whole statements or items: dropping them (with those of the
    parts that build on it) leaves Python."""
    gone = with_dependents(name)
    for path in python_files():
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if parts.registered_part(line) not in gone]
        if kept != lines:
            ast.parse("".join(kept), filename=str(path))


def test_every_registration_line_names_a_part_of_the_table() -> None:
    named = {  # a part registers in the core or in another part (one it builds on)
        name
        for path in python_files()
        for line in path.read_text().splitlines()
        if (name := parts.registered_part(line)) != part_of(path)
    }
    assert named - {None} <= set(parts.PARTS)
    imported_parts = {name for name, part in parts.PARTS.items() if part.module and part.present}
    # A part the app imports is registered somewhere, or a part it is in builds on it.
    built_on = {required for part in parts.PARTS.values() for required in part.requires}
    assert imported_parts <= named | built_on


def test_a_part_in_this_copy_has_all_its_files() -> None:
    for name, part in parts.PARTS.items():
        if part.present:
            assert all((ROOT / f).exists() for f in part.files), name


def test_the_keys_beyond_the_cores_are_the_present_parts_keys() -> None:
    core = {key_of(f.name) for f in dataclasses.fields(CoreKeys)}
    every = {key_of(f.name) for f in dataclasses.fields(RunConfig)}
    declared = {key for part in parts.PARTS.values() if part.present for key in part.keys}
    assert every - core == declared
    assert not core & {key for part in parts.PARTS.values() for key in part.keys}


# ---- python -m fl_app.new ------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An app of the core alone, as ``python -m fl_app.new DEST`` makes it."""
    destination = tmp_path_factory.mktemp("new") / "my-app"
    new.make_app(destination, "my-app", "my-app", [])
    return destination


def text_files(root: Path) -> dict[str, str]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            with contextlib.suppress(UnicodeDecodeError):
                found[path.relative_to(root).as_posix()] = path.read_text()
    return found


# A new app without parts reads in an afternoon: at most this many lines of non-test
# Python (docs/template.md; `python -m fl_app.new --sizes` prints the counts).
CORE_LINES = 3000


def test_a_new_app_is_the_core_within_its_line_budget(bare_app: Path) -> None:
    lines = new.python_lines(bare_app)
    assert lines <= CORE_LINES, f"the core has {lines} lines of non-test Python"


def test_a_new_app_holds_no_file_of_a_part(bare_app: Path) -> None:
    for part in [*parts.PARTS.values(), parts.TEMPLATE]:
        kept = [f for f in part.files if (bare_app / f).exists()]
        assert kept in ([], ["README.md"]), kept  # the app's own README replaces the template's


@pytest.mark.parametrize("name", sorted(parts.PARTS))
def test_a_new_app_holds_no_trace_of_a_part_it_left_out(bare_app: Path, name: str) -> None:
    """No file of the app (code, tests, help texts, comments, config, README) names the
    part, its modules, files, keys or flags."""
    part = parts.PARTS[name]
    terms = [*part.words, *part.keys, *part.flags, *part.files, part.module, f"part: {name}"]
    found = re.compile(
        "|".join(rf"(?<![\w-]){re.escape(term)}(?!\w)" for term in terms if term), re.I
    )
    traces = [
        f"{path}:{number}: {line.strip()}"
        for path, text in text_files(bare_app).items()
        for number, line in enumerate(text.splitlines(), 1)
        if found.search(line)
    ]
    assert traces == []


def test_a_new_app_with_every_part_is_the_template_less_its_own_files(tmp_path: Path) -> None:
    new.make_app(tmp_path, "everything", "everything", list(parts.PARTS))
    made = text_files(tmp_path)
    for path in new.template_files():
        if new.belongs_to(path, parts.TEMPLATE):
            assert path not in made or path in ("README.md", "fl_app/parts/__init__.py")
        elif path.endswith(".py"):
            assert made.pop(path) == (ROOT / path).read_text(), path


def test_new_takes_the_parts_a_part_builds_on(tmp_path: Path) -> None:
    new.make_app(tmp_path, "scenarios", "someone", ["presets"])
    taken = {name for name, part in parts.PARTS.items() if (tmp_path / part.files[0]).exists()}
    assert taken == {"presets", *parts.PARTS["presets"].requires}
    pyproject = (tmp_path / "pyproject.toml").read_text()
    assert 'name = "scenarios"' in pyproject
    assert 'publisher = "someone"' in pyproject
    readme = (tmp_path / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in taken)


@pytest.mark.parametrize(
    ("arguments", "wanted"),
    [
        (["--with", "nope"], "unknown part 'nope'; the parts: comparisons"),
        (["--name", "My_App"], "--name 'My_App' is not allowed: lowercase letters"),
        (["--publisher", "Big Co"], "--publisher 'Big Co' is not allowed"),
    ],
)
def test_a_bad_argument_of_new_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], wanted: str
) -> None:
    assert new.main([str(tmp_path / "app"), *arguments]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert wanted in line
    assert not (tmp_path / "app").exists()


@pytest.mark.parametrize("arguments", [["app"], ["--sizes"]])
def test_without_ruff_new_says_so_in_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    arguments: list[str],
) -> None:
    """An unformatted app would fail its own format check (and count lines it need not)."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ruff" else find_spec(name, *a),
    )
    monkeypatch.chdir(tmp_path)
    assert new.main(arguments) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "ruff, not installed: pip install -e '.[dev]'" in line
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_a_folder_that_holds_something(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert new.main([str(tmp_path)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
