"""benchmarks.builds names each build in its saved run by the commit of its tree, not by where the tree lay."""
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.builds import tree_commit  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(tree, *args):
    return subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_tree_commit_names_the_commit_and_uncommitted_changes(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "f.txt").write_text("one\n")
    git(tmp_path, "add", "f.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert tree_commit(str(tmp_path)) == head[:12]
    (tmp_path / "untracked.txt").write_text("not part of the build\n")
    assert tree_commit(str(tmp_path)) == head[:12]
    (tmp_path / "f.txt").write_text("two\n")
    assert tree_commit(str(tmp_path)) == head[:12] + "+changes"


def test_tree_commit_outside_git(tmp_path):
    assert tree_commit(str(tmp_path)) == "unknown"
