"""The test tree itself: pytest imports test and helper modules by their base name
(the test folders are not packages), so two files of one name break collection."""
from __future__ import annotations

import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parent


def test_module_names_are_unique_across_the_test_tree():
    seen = collections.defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name != "conftest.py":
            seen[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
