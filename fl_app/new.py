"""Make a new Flower app from this template.

    python -m fl_app.new DEST --name NAME [--with PART ...]   (--list: the parts)

The app is the core (``fl_app``, ``strategies``, ``run_simulation.py``, its tests) and the
optional parts named, with the parts they build on (fl_app/parts/__init__.py). A part left
out goes with its files and with the lines, elsewhere, that end in ``# part: <name>``; the
template's own files (its docs site, this command, the parts table) never go. The app gets
its own name and FAB identity in pyproject.toml and a short README.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fl_app.parts import PARTS, ROOT, TEMPLATE, Part, registered_part

NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
ASSIGNED = re.compile(r"( +)(\w+) = (.+\n)")  # an unannotated assignment of one line
# Never copied from a checkout that is not a git work tree (git says what is tracked).
UNTRACKED = {".git", ".venv", "__pycache__", "outputs", "data", "site", "dist", "build"}


class NewAppError(Exception):
    """A bad argument: one line, and nothing written."""


def with_requirements(names: list[str]) -> list[str]:
    """``names`` and every part they build on, in the table's order."""
    chosen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in PARTS:
            raise NewAppError(f"unknown part {name!r}; the parts: {', '.join(PARTS)}")
        if name not in chosen:
            chosen.add(name)
            todo.extend(PARTS[name].requires)
    return [name for name in PARTS if name in chosen]


def template_files() -> list[str]:
    """The template's files, relative to its root: what git tracks or would."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode == 0:
        return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]
    return [
        path.relative_to(ROOT).as_posix()
        for path in ROOT.rglob("*")
        if path.is_file()
        and not UNTRACKED.intersection(path.relative_to(ROOT).parts)
        and not path.name.endswith((".pyc", ".fab"))
    ]


def belongs_to(path: str, part: Part) -> bool:
    return any(path == f or path.startswith(f"{f}/") for f in part.files)


def kept_lines(text: str, kept: set[str]) -> str:
    """``text`` less the lines that register a part not in ``kept``; where a dropped run of
    lines stood between two gaps (a function of its own), the gap after it goes too, and where
    it stood between ``name = value`` and ``return name``, the two become ``return value``."""
    out: list[str] = []
    gap_goes = dropped = False
    for line in text.splitlines(keepends=True):
        if registered_part(line) not in (None, *kept):
            gap_goes, dropped = bool(out) and not out[-1].strip(), True
            continue
        assigned = ASSIGNED.fullmatch(out[-1]) if dropped and out else None
        if assigned and line == f"{assigned[1]}return {assigned[2]}\n":
            out[-1] = f"{assigned[1]}return {assigned[3]}"
        elif not (gap_goes and not line.strip()):
            gap_goes = False
            out.append(line)
        dropped = False
    return "".join(out).rstrip("\n") + "\n" if out else ""


def renamed(pyproject: str, name: str, publisher: str) -> str:
    """The template's pyproject.toml with the app's name, description and publisher."""
    pyproject = re.sub(
        r'(?m)^description = ".*"$', f'description = "{name}: a Flower app"', pyproject
    )
    pyproject = re.sub(r'(?m)^publisher = ".*"$', f'publisher = "{publisher}"', pyproject)
    return pyproject.replace('"fl-template', f'"{name}')


def readme(name: str, parts: list[str]) -> str:
    """The app's README: what it is, install and run, test, where things are."""
    made = "python -m fl_app.new" + "".join(f" --with {p}" for p in parts)
    listed = "".join(f"- `{p}`: {PARTS[p].summary}\n" for p in parts) or "- none\n"
    return f"""# {name}

A Flower app (PyTorch, Flower's Message API) made from the fl-template with `{made}`.

## Quickstart

```bash
python -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && python run_simulation.py
pytest
```

The first command installs the app and runs its default simulation (`[tool.flwr.app.config]`
in pyproject.toml: every setting and its default); the second runs its tests
(`pytest -m "not slow"`: the quick ones).

## Run

- `python run_simulation.py --num-clients 20 --strategy hybrid`: one run, many virtual clients
  on Flower's simulation engine; `--help` lists every setting. Results in `outputs/<run-name>/`.
- `flwr run .`: the same app through Flower's CLI, in simulation or on a deployment
  (SuperLink and SuperNodes), with `--run-config "key=value ..."`.
- `flwr build`: the app's FAB (its code and pyproject.toml).

## Where things are

- `fl_app/task.py`: the data, the model, training and evaluation (no Flower): edit this first.
- `fl_app/client_app.py`, `fl_app/server_app.py`: the ClientApp (a `NumPyClient` that trains)
  and the ServerApp (the round loop, checkpoints and resume).
- `fl_app/kit/`: the settings, data splits, results, checkpoints and simulation runs.
- `fl_app/engine/`: where the app changes Flower's or Ray's behaviour, checked against the
  versions it was tested with.
- `strategies/`: the aggregation rules (no Flower) and their Flower strategy.
- `tests/`: quick tests of the math and the apps; `slow` ones run Flower end to end.

## Optional parts

{listed}"""


def make_app(destination: Path, name: str, publisher: str, parts: list[str]) -> None:
    """Write the app of the core and ``parts`` (with their requirements) at ``destination``."""
    if not NAME.fullmatch(name):
        raise NewAppError(
            f"--name {name!r} is not allowed: lowercase letters, digits and single hyphens, "
            "starting with a letter"
        )
    if not NAME.fullmatch(publisher):
        raise NewAppError(f"--publisher {publisher!r} is not allowed: the same form as --name")
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise NewAppError(f"{destination} exists and is not an empty folder")
    if importlib.util.find_spec("ruff") is None:  # the app would fail its own format check
        raise NewAppError("new formats the app with ruff, not installed: pip install -e '.[dev]'")
    kept = with_requirements(parts)
    left_out = [PARTS[p] for p in PARTS if p not in kept] + [TEMPLATE]
    trimmed: list[str] = []  # the Python files that lost lines
    for path in template_files():
        if any(belongs_to(path, part) for part in left_out):
            continue
        target = destination / path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            text = (ROOT / path).read_text()
        except UnicodeDecodeError:
            shutil.copy2(ROOT / path, target)
            continue
        kept_text = kept_lines(text, set(kept))
        if kept_text != text and path.endswith(".py"):
            trimmed.append(path)
        if path == "pyproject.toml":
            kept_text = renamed(kept_text, name, publisher)
        target.write_text(kept_text)
        shutil.copymode(ROOT / path, target)
    if (destination / "fl_app" / "parts").is_dir():  # the parts table stays behind
        (destination / "fl_app" / "parts" / "__init__.py").write_text(
            '"""The optional parts this app was made with (its README lists them)."""\n'
        )
    (destination / "README.md").write_text(readme(name, kept))
    tidy(destination, trimmed)


def tidy(destination: Path, trimmed: list[str]) -> None:
    """Format the app as its own lint wants it: a dropped line may leave a list empty, imports
    to re-sort, or (in ``trimmed``) a call split over lines it no longer needs."""
    joined = ["format", "--config", "format.skip-magic-trailing-comma=true", *trimmed]
    commands = [joined] if trimmed else []
    for command in [*commands, ["format", "."], ["check", "--fix", "--select", "I", "."]]:
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--quiet"],
            cwd=destination,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise NewAppError(f"ruff {command[0]} failed in {destination}: {said[-1]}")


def python_lines(root: Path) -> int:
    """The lines of non-test Python under ``root`` (``wc -l``: every line counts)."""
    return sum(
        len(path.read_text().splitlines())
        for path in root.rglob("*.py")
        if "tests" not in path.relative_to(root).parts
    )


def sizes() -> dict[str, int]:
    """Lines of non-test Python: the template, a new app without parts (made in a temporary
    folder, as ``new`` makes it), each part (its files and its marked lines), the
    template's own files."""
    counts = {"template": 0, "core": 0, **dict.fromkeys(PARTS, 0), "template's own": 0}
    owners = {**PARTS, "template's own": TEMPLATE}
    for path in template_files():
        if not path.endswith(".py") or path.startswith("tests/"):
            continue
        lines = (ROOT / path).read_text().splitlines()
        counts["template"] += len(lines)
        owner = next((name for name, part in owners.items() if belongs_to(path, part)), None)
        if owner is not None:
            counts[owner] += len(lines)
            continue
        for line in lines:
            if (marked := registered_part(line)) is not None:
                counts[marked] += 1
    with tempfile.TemporaryDirectory() as folder:
        make_app(Path(folder) / "app", "app", "app", [])
        counts["core"] = python_lines(Path(folder) / "app")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fl_app.new", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("destination", nargs="?", type=Path, help="the new app's folder")
    parser.add_argument("--name", help="the app's name (default: the folder's name)")
    parser.add_argument("--publisher", help="the FAB's publisher (default: the name)")
    parser.add_argument(
        "--with", dest="parts", nargs="+", default=[], metavar="PART", help="optional parts"
    )
    parser.add_argument("--list", action="store_true", help="list the optional parts")
    parser.add_argument(
        "--sizes", action="store_true", help="lines of non-test Python: core, parts, template"
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, part in PARTS.items():
            print(f"{name:20} {part.summary}")
        return 0
    if args.destination is None and not args.sizes:
        parser.error("the destination folder is required")
    try:
        if args.sizes:
            for row, count in sizes().items():
                print(f"{row:20} {count:6}")
            return 0
        name = args.name or re.sub(r"[^a-z0-9]+", "-", args.destination.resolve().name.lower())
        make_app(args.destination, name, args.publisher or name, args.parts)
    except NewAppError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"made {name} in {args.destination}: cd there and follow its README")
    return 0


if __name__ == "__main__":
    sys.exit(main())
