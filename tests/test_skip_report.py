"""tests/skip_report.py: a skipped test shows up, with its reason and the command that enables it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .skip_report import commands_for

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "sudo apt-get install chromium"

SUITE = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="Debian's chromium (.ci/run installs it)")
def test_in_a_browser():
    pass

def test_needs_a_tool():
    pytest.skip("needs the openssl command")
"""


def test_summary_lists_skips_and_the_commands(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("-p", "tests.skip_report")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*!!! 2 tests SKIPPED: not tested on this machine !!!*",
            "SKIPPED test_suite.py::test_in_a_browser: Debian's chromium (.ci/run installs it)",
            f"    to run it: {CHROMIUM}",
            "SKIPPED test_suite.py::test_needs_a_tool: needs the openssl command",
            "    to run it: sudo apt-get install openssl",
            "Install what they need, then run the tests again:",
            f"    {CHROMIUM}",
            "    sudo apt-get install openssl",
        ]
    )
    # The section comes before pytest's closing line, which stays last.
    assert "1 passed, 2 skipped" in result.outlines[-1]


def test_nothing_skipped_prints_no_section(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite="def test_runs():\n    pass\n")
    result = pytester.runpytest("-p", "tests.skip_report")
    result.assert_outcomes(passed=1)
    assert "SKIPPED" not in result.stdout.str()


def test_commands_for_a_reason() -> None:
    assert commands_for("needs Debian's chromium: sudo apt-get install chromium") == [CHROMIUM]
    assert commands_for("needs curl and jq") == ["sudo apt-get install curl jq"]
    assert commands_for("no reason we know") == []


def test_the_suite_names_the_chromium_command_when_chromium_is_missing() -> None:
    # The real wiring: pyproject.toml's addopts loads the plugin, and the dashboard test skips when
    # chromium is not on PATH (the venv's bin has none) and CI is not set.
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(Path(sys.executable).parent)
    test = "tests/test_dashboard.py::test_page_in_headless_chromium"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 test SKIPPED: not tested on this machine" in done.stdout
    assert f"SKIPPED {test}: needs Debian's chromium" in done.stdout
    assert f"to run it: {CHROMIUM}" in done.stdout
