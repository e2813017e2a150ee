"""The README and the docs: what `mkdocs build --strict` (make docs) cannot see.

The site build checks links between docs pages and every API reference. It
does not read the README (a landing page outside docs/) nor care which names
the reference pages document, so these tests do.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [
        target.split("#", 1)[0]
        for target in _LINK.findall(text)
        if not re.match(r"[a-z]+:", target) and not target.startswith("#")
    ]


def test_the_readme_is_a_landing_page_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^make (\w+)", quick_start, flags=re.MULTILINE)
    assert commands == ["demo", "test"]
    # CI runs exactly the README's test command.
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, flags=re.MULTILINE)
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    (test_rule,) = re.findall(r"^test:(.*)$", makefile, flags=re.MULTILINE)
    assert "docs" in test_rule.split(), "make test builds the docs first"


def test_the_readmes_links_reach_files() -> None:
    for readme in (README, REPO / "email_pipeline" / "README.md"):
        for target in relative_links(readme):
            assert (readme.parent / target).exists(), f"{readme.name}: {target}"


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(nav: object) -> set[str]:
        if isinstance(nav, str):
            return {nav}
        if isinstance(nav, list):
            return set().union(*(pages(item) for item in nav))
        if isinstance(nav, dict):
            return set().union(*(pages(value) for value in nav.values()))
        return set()

    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages(config["nav"]) == on_disk


def test_the_reference_documents_public_names_only() -> None:
    """Private modules move; the names users import stay (tests/test_exports.py)."""
    for page in sorted((DOCS / "reference").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for name in re.findall(r"^::: ([\w.]+)", text, flags=re.MULTILINE):
            assert not any(part.startswith("_") for part in name.split(".")), (page.name, name)
        for name in re.findall(r"\]\[([\w.]+)\]", text):
            assert not any(part.startswith("_") for part in name.split(".")), (page.name, name)


def test_the_code_cites_the_design_in_the_repository() -> None:
    for path in sorted((REPO / "durable_fx").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "DESIGN.md" not in text, path
        for cited in re.findall(r"docs/[\w/.-]+\.md", text):
            assert (REPO / cited).exists(), (path, cited)
