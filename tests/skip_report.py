"""A pytest plugin: the summary lists every skipped test, why, and the command that enables it.

A skipped test is easy to miss in ``1 skipped`` at the end of a long run, and a machine without a tool
(Debian's ``chromium``, say) then never tests what needs it. Loaded by pyproject.toml's ``addopts``.
"""

from __future__ import annotations

import re

import pytest

# A word in a skip reason → the command that installs what the test needs (Debian).
ENABLE = {
    "chromium": "sudo apt-get install chromium",
    "curl": "sudo apt-get install curl jq",
    "jq": "sudo apt-get install curl jq",
    "openssl": "sudo apt-get install openssl",
}


def reason_of(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skip report gives, without pytest's ``Skipped:`` prefix."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def commands_for(reason: str) -> list[str]:
    """The commands that enable a test skipped for ``reason``, each once, in the order named."""
    words = re.findall(r"[\w-]+", reason.lower())
    return list(dict.fromkeys(ENABLE[word] for word in words if word in ENABLE))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the skipped tests in a section of their own, just above the closing line."""
    # Collection skips (a module's ``pytest.skip(allow_module_level=True)``) count too.
    skipped = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if isinstance(r, (pytest.TestReport, pytest.CollectReport))
    ]
    if not skipped:
        return
    write = terminalreporter.write_line
    terminalreporter.section(
        f"{len(skipped)} test{'s' if len(skipped) > 1 else ''} SKIPPED: not tested on this machine",
        sep="!",
        yellow=True,
        bold=True,
    )
    commands: list[str] = []
    for report in skipped:
        reason = reason_of(report)
        write(f"SKIPPED {report.nodeid}: {reason}", yellow=True, bold=True)
        for command in commands_for(reason):
            write(f"    to run it: {command}")
            commands.append(command)
    if len(skipped) > 1 and commands:  # one place to copy them from
        write("")
        write("Install what they need, then run the tests again:", bold=True)
        for command in dict.fromkeys(commands):
            write(f"    {command}", bold=True)
