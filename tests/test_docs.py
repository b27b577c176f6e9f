"""The README stays short and starts with the two commands; the docs site builds; no link is broken.

docs/index.md is the README with its links moved inside docs/: regenerate it with
`python tests/test_docs.py` after editing README.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def readme_as_index() -> str:
    """docs/index.md's text: README.md with `docs/` taken off its links."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return "<!-- made from README.md by `python tests/test_docs.py`: edit README.md -->\n" + \
        LINK.sub(lambda m: "](" + m.group(1).removeprefix("docs/") + ")", text)


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move details into docs/"
    start = lines.index("## Two commands")
    assert start < 15 and "pip install -e '.[dev]'" in "\n".join(lines[start:start + 8])


def test_docs_index_is_the_readme():
    assert (REPO / "docs" / "index.md").read_text(encoding="utf-8") == readme_as_index(), \
        "docs/index.md is stale: run `python tests/test_docs.py`"


def test_every_relative_link_points_at_a_file():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            path = target.split("#")[0]
            if path and "://" not in path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken


def test_the_docs_site_builds_without_warnings(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs-material is not installed (pip install -e '.[dev]')")
    result = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=REPO,
                            capture_output=True, text=True, timeout=120, env={"NO_MKDOCS_2_WARNING": "1",
                                                                             "PATH": str(Path(sys.executable).parent)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "usage" / "index.html").is_file()


if __name__ == "__main__":
    (REPO / "docs" / "index.md").write_text(readme_as_index(), encoding="utf-8")
