"""The repository carries its own contract: the docs it cites exist, and nothing cites a file it lacks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    paths = [REPO / name for name in names.stdout.split() if name.endswith((".py", ".md", ".yaml", ".txt"))]
    return [p for p in paths if p.exists()]


def test_nothing_cites_a_design_document_outside_the_repository():
    files = [p for p in tracked_text_files() if p != Path(__file__).resolve()]
    citing = [str(p.relative_to(REPO)) for p in files if "DESIGN.md" in p.read_text()]
    assert citing == [], "cite docs/contract.md or the README instead"


def test_every_local_link_and_docs_path_in_the_docs_exists():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text()
        targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text) + re.findall(r"\bdocs/[\w.-]+\.\w+", text)
        for target in targets:
            assert (page.parent / target).exists() or (REPO / target).exists(), f"{page.name}: {target}"
    assert "docs/contract.md" in (REPO / "README.md").read_text()
