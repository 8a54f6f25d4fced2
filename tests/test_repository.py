"""The tree itself: no merge left half-done in the docs or the code."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^(<{7} |={7}$|>{7} )", re.M)


def test_no_merge_conflict_markers():
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for sub, pattern in (("docs", "*.md"), ("src", "*.py"), ("tests", "*.py"), ("examples", "*.py"),
                         ("benchmarks", "*.py")):
        files += sorted((ROOT / sub).rglob(pattern))
    bad = [str(f.relative_to(ROOT)) for f in files if MARKER.search(f.read_text(encoding="utf-8", errors="replace"))]
    assert not bad, f"merge conflict markers in {bad}"
