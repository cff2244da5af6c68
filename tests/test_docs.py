"""The docs stay true: every path `docs/architecture.md` names exists, every journey page is linked from the README,
and the README stays a front door."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT


def test_every_path_the_architecture_page_names_exists():
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"`((?:mtpf|configs|docs|tests|bench|scripts)/[^`*<> ]+?)`", text))
    assert len(paths) > 10
    assert [p for p in sorted(paths) if not (REPO_ROOT / p).exists()] == []


def test_the_readme_is_short_and_links_every_docs_page():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    pages = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "docs").glob("*.md"))
    assert [page for page in pages if page not in readme] == []
