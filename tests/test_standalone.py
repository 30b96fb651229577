"""The repository stands alone: nothing in it names a path outside itself.

A clone in an empty folder has no sibling checkout, no developer's home folder and no notes
kept beside the repository, so a test, benchmark or docstring that reaches for one breaks (or
misleads) a user, a fork's CI or a packager. This scans the tracked sources for such references.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("tests", "clipscale", "benchmarks", "analysis", "experiments")
# Top-level files a user reads or CI runs; cluster/ is left out because its container paths
# (/home/ray/..., /tmp/ray) are paths inside the images it builds, not on a dev machine.
SCANNED_FILES = ("README.md", "ARCHITECTURE.md", "Makefile", "pyproject.toml", ".ci/run")
SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
SUFFIXES = {".py", ".ipynb", ".md", ".txt", ".yaml", ".yml", ".json", ".toml", ".cfg", ".ini", ".sh", ".csv", ""}
# This file spells out the forbidden patterns and examples of them, so it cannot scan itself.
SELF = Path(__file__).resolve()


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]


RULES = (
    Rule("sibling 'shared' checkout", re.compile(r"\.\./shared\b|\bshared/(data|design|hooks)\b|['\"]shared['\"]")),
    Rule("developer notes kept outside the repository", re.compile(r"STACK_NOTES|\bDESIGN\.md\b")),
    Rule("absolute path of a dev machine", re.compile(r"(?<![\w.])(/work|/root|/home|/Users)/|[A-Za-z]:\\Users\\")),
    # REPO.parent / ROOT.parent is the folder that holds the checkout, i.e. outside it.
    Rule("parent of the repository root", re.compile(r"\b[A-Z_]*(ROOT|REPO)[A-Z_]*\.parent\b")),
)
# Path(__file__).resolve().parents[k] leaves the repository when k >= the file's depth in it.
FILE_PARENTS = re.compile(r"__file__\)?(?:\.resolve\(\))?\.parents\[(\d+)\]")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.text.strip()[:120]}"


def scanned_paths(root: Path = ROOT) -> list[Path]:
    paths = [root / f for f in SCANNED_FILES if (root / f).is_file()]
    for d in SCANNED_DIRS:
        for p in sorted((root / d).rglob("*")):
            if p.is_file() and p.suffix in SUFFIXES and not SKIPPED_PARTS & set(p.parts):
                paths.append(p)
    return [p for p in paths if p.resolve() != SELF]


def scan_text(text: str, rel: Path) -> list[Finding]:
    """Every line of `text` (the file at repo-relative `rel`) that points outside the repository."""
    found = []
    for i, line in enumerate(text.splitlines(), 1):
        for rule in RULES:
            if rule.pattern.search(line):
                found.append(Finding(str(rel), i, rule.name, line))
        for m in FILE_PARENTS.finditer(line):
            if int(m.group(1)) >= len(rel.parts):
                found.append(Finding(str(rel), i, f"parents[{m.group(1)}] of a file {len(rel.parts)} deep", line))
    return found


def scan(root: Path = ROOT) -> list[Finding]:
    found = []
    for p in scanned_paths(root):
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary: cannot hold a path we could read anyway
        found.extend(scan_text(text, p.relative_to(root)))
    return found


def test_repository_names_no_path_outside_itself():
    assert len(scanned_paths()) > 50, "the scan found almost nothing to read: wrong root?"
    findings = scan()
    assert not findings, "references outside the repository:\n" + "\n".join(map(str, findings))


@pytest.mark.parametrize(
    "line, rel",
    [
        ('CSV = Path(__file__).resolve().parents[2] / "data" / "x.csv"', "tests/test_x.py"),
        ('DATA = REPO.parent / "shared" / "data" / "points.csv"', "benchmarks/bench_x.py"),
        ('"data": "/work/shared/data/chinchilla_epoch_points.csv",', "benchmarks/results/bench_x.json"),
        ("see ../shared/notes for why", "clipscale/x.py"),
        ("Conventions (DESIGN.md): one parent run", "clipscale/x.py"),
        ("(STACK_NOTES: 0-dim params break its broadcast)", "tests/test_x.py"),
        ("cache = '/home/alice/.cache/clipscale'", "clipscale/x.py"),
        ("root = '/root/corpus'", "experiments/x.py"),
        (r"open('C:\Users\bob\points.csv')", "analysis/x.py"),
    ],
)
def test_scan_catches_each_kind_of_outside_reference(line, rel):
    assert scan_text(line, Path(rel)), f"not flagged: {line!r}"


@pytest.mark.parametrize(
    "line, rel",
    [
        ('CSV = Path(__file__).resolve().parents[0] / "data" / "x.csv"', "tests/test_x.py"),
        ("REPO = Path(__file__).resolve().parents[2]", "tests/reliability/test_x.py"),
        ("out_prefix.parent.mkdir(parents=True, exist_ok=True)", "clipscale/x.py"),
        ('load("cluster.storage_path=/tmp/x")', "tests/test_x.py"),
        ("a shared/ memory segment, shared by the ranks", "clipscale/x.py"),
        ("details in ARCHITECTURE.md", "clipscale/x.py"),
        ("s3://bucket/home/runs and data/work/x", "experiments/x.py"),
    ],
)
def test_scan_leaves_paths_inside_the_repository_alone(line, rel):
    assert not scan_text(line, Path(rel))
