"""The slow marker: every test conftest.SLOW names exists (a renamed test would otherwise drop
silently into the fast suite), and plain pytest skips what it marks."""

from __future__ import annotations

import re
from pathlib import Path

import conftest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent


def test_every_slow_name_is_a_test():
    missing = []
    for name in sorted(conftest.SLOW):
        file, function = name.split("::")
        paths = list(TESTS.rglob(file))  # (tests/ and its subfolders: the basename is unique)
        if len(paths) != 1 or not re.search(rf"^(async )?def {function}\(", paths[0].read_text(), re.MULTILINE):
            missing.append(name)
    assert not missing, f"conftest.SLOW names tests that do not exist: {missing}"


def test_plain_pytest_skips_slow_tests(pytester):
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(
        test_a="import pytest\n\n@pytest.mark.slow\ndef test_long():\n    pass\n\ndef test_short():\n    pass\n"
    )
    pytester.makeini("[pytest]\nmarkers =\n    slow: long\n")
    pytester.runpytest().assert_outcomes(passed=1, skipped=1)
    pytester.runpytest("--runslow").assert_outcomes(passed=2)
    pytester.runpytest("-m", "slow").assert_outcomes(passed=1, deselected=1)
