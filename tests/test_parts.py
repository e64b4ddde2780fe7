"""The optional parts (fl_app/parts/__init__.py): each is reached only through its registration
lines, its keys are its own, and a key or flag of a part that is gone is one clear line."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from fl_app import parts
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


@pytest.mark.parametrize("name", sorted(parts.PARTS))
def test_the_code_without_a_part_still_parses(name: str) -> None:
    """A part's marked lines are whole statements or items: dropping them leaves Python."""
    for path in python_files():
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if parts.registered_part(line) != name]
        if kept != lines:
            ast.parse("".join(kept), filename=str(path))


def test_every_registration_line_names_a_part_of_the_table() -> None:
    named = {
        parts.registered_part(line)
        for path in python_files()
        if part_of(path) is None
        for line in path.read_text().splitlines()
    }
    assert named - {None} <= set(parts.PARTS)
    imported_parts = {name for name, part in parts.PARTS.items() if part.module and part.present}
    assert imported_parts <= named  # a part the app imports is registered somewhere


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
