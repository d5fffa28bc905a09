"""The documentation site: its code runs, its links and figures exist, and it builds strictly.

Every fenced ```` ```python ```` block of a page runs, page by page and in order, in a fresh
interpreter in a temporary folder: the blocks of one page share their state, as in a notebook, so a
tutorial is tested as a reader runs it. Blocks that cannot run in a test (an upload to the Hub, a
path to your own data) are fenced ```` ```{.python .no-run} ```` and only rendered.

``mkdocs build --strict`` runs when mkdocs, mkdocs-material and mkdocstrings are installed (the
``docs`` extra); without them that test is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
# A fenced python block, possibly indented (inside an admonition or a list); group 2 is its code.
PYTHON_BLOCK = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```[ \t]*$", re.DOTALL | re.MULTILINE)
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")
SNIPPET = re.compile(r'^[ \t]*--8<--[ \t]+"([^"]+)"', re.MULTILINE)
OPTIONAL_LIBRARIES = ("albumentations", "monai")
# The site's pages (not the result tables, which pages include as snippets).
PAGES = sorted(p for p in DOCS.rglob("*.md") if "results" not in p.relative_to(DOCS).parts)


def python_blocks(page: Path) -> list[str]:
    return [textwrap.dedent(code) for _, code in PYTHON_BLOCK.findall(page.read_text(encoding="utf-8"))]


def page_id(page: Path) -> str:
    return str(page.relative_to(DOCS))


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=page_id)
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    code = "\n\n".join(python_blocks(page))
    for library in OPTIONAL_LIBRARIES:
        imported = re.search(rf"^\s*(import|from) {library}\b", code, re.MULTILINE)
        if imported and importlib.util.find_spec(library) is None:
            pytest.skip(f"{page_id(page)} needs {library}, which is not installed")
    script = tmp_path / "page.py"
    script.write_text(code, encoding="utf-8")
    # One torch thread: on a CPU shared with other jobs, thread barriers make small examples far slower.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    assert result.returncode == 0, f"{page_id(page)} code failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


@pytest.mark.parametrize(
    "page", [DOCS / "getting-started.md", *sorted((DOCS / "tutorials").glob("*.md"))], ids=page_id
)
def test_tutorials_have_runnable_code(page: Path) -> None:
    assert len(python_blocks(page)) >= 2, f"{page_id(page)} should show code that runs"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_images_and_snippets_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for link in IMAGE_LINK.findall(text):
        if "://" not in link:
            assert (page.parent / link).is_file(), f"{page_id(page)} shows a missing image {link}"
    for snippet in SNIPPET.findall(text):
        assert (DOCS / snippet).is_file(), f"{page_id(page)} includes a missing file docs/{snippet}"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert (tmp_path / "site" / "api" / "index.html").is_file()
