"""The README and docs/: short enough to read, and every link and command they name exists."""
import importlib.util
import pathlib
import re

import pytest

import rkd_ext

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The package's own files are looked up where it is imported from: the tests may run from a tree without it,
# against an installed wheel.
PACKAGE = pathlib.Path(rkd_ext.__file__).resolve().parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
MODULE = re.compile(r"python -m ((?:benchmarks|rkd_ext)(?:\.\w+)*)")
SCRIPT = re.compile(r"(?<![\w/.])((?:scripts|benchmarks|csrc|rkd_ext|python_tests)/[\w./-]+\.(?:py|sh|h|cuh|cu|cpp))")


def repo_file(name):
    """A file the docs name by its path in the repository."""
    first, _, rest = name.partition("/")
    return PACKAGE / rest if first == "rkd_ext" else ROOT / name


def anchors(path):
    """GitHub's anchors of a markdown file's headings."""
    out = set()
    fence = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def broken_links(page):
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            bad.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            bad.append(target)
    return bad


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    assert broken_links(page) == []


def test_the_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A title\n[ok](#a-title) [gone](missing.md) [no anchor](#nowhere)\n")
    assert broken_links(page) == ["missing.md", "#nowhere"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_modules_and_files_exist(page):
    text = page.read_text()
    missing = [m for m in MODULE.findall(text) if importlib.util.find_spec(m) is None]
    missing += [f for f in SCRIPT.findall(text) if not repo_file(f).exists()]
    assert missing == []
