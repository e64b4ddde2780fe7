"""The README stays a front door and every docs page is on the site (mkdocs.yml's nav).

`mkdocs build --strict` (in .ci/run) checks the links and anchors; these checks need no
mkdocs: the README's length, the nav against the files in docs/, the README's links into
docs/, and the quickstart and layout that README.md and docs/index.md both show.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from fl_app.parts import PARTS
from tests.processes import ROOT

DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 300


def nav_pages(entries: Any) -> list[str]:
    """Every page a mkdocs nav names, nested sections included."""
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in nav_pages(value)]
    return []


def fenced(text: str, heading: str) -> str:
    """The first fenced block under ``## heading`` (up to the next ``## `` heading)."""
    section = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section is not None, heading
    block = re.search(r"^```\w*\n(.*?)^```", section.group(1), re.S | re.M)
    assert block is not None, heading
    return block.group(1)


def test_the_readme_is_a_front_door() -> None:
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move text into docs/"


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config.get("docs_dir", "docs") == "docs"
    nav = nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_the_readme_links_to_docs_pages_that_exist() -> None:
    links = re.findall(r"\]\((docs/[^)#\s]+)", README.read_text())
    assert links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert missing == []


def test_the_site_front_page_shows_the_readme_quickstart_and_layout() -> None:
    readme, index = README.read_text(), (DOCS / "index.md").read_text()
    for heading in ("Quickstart", "Layout"):
        assert fenced(index, heading) == fenced(readme, heading), heading
    # Both quickstart commands, the install-and-run one and the test one.
    quickstart = re.search(r"^## Quickstart\n(.*?)^## ", readme, re.S | re.M)
    assert quickstart is not None
    commands = re.findall(r"^```bash\n(.*?)^```", quickstart.group(1), re.S | re.M)
    assert commands == [
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'
        " && python run_simulation.py\n",
        "pytest\n",
    ]
    assert commands == re.findall(r"^```bash\n(.*?)^```", index, re.S | re.M)[:2]


def test_the_template_page_lists_every_part_with_what_it_builds_on() -> None:
    rows = re.findall(r"^\| `([a-z-]+)` \|.*\|([^|]*)\|$", (DOCS / "template.md").read_text(), re.M)
    listed = {name: set(re.findall(r"`([a-z-]+)`", builds_on)) for name, builds_on in rows}
    assert listed == {name: set(part.requires) for name, part in PARTS.items()}


def test_the_readme_layout_matches_the_tree() -> None:
    """Every module of the apps is in the layout, and everything the layout names exists."""
    layout = fenced(README.read_text(), "Layout")
    named = set(re.findall(r"[\w.-]+\.(?:py|toml|yml)|[\w-]+/", layout))
    modules = {
        path.name
        for package in ("fl_app", "strategies")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py" and "parts" not in path.relative_to(ROOT).parts
    }
    assert modules - named == set()
    everything = {path.name for path in ROOT.rglob("*") if ".venv" not in path.parts}
    assert {name.rstrip("/") for name in named} - everything == set()
