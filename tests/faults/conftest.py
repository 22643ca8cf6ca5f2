"""The fault-injection suite: every test here is marked `faults`, and the session ends
with a table of each fault, the cycles run, the failures and anything lost."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@dataclass
class FaultRow:
    label: str
    cycles: int = 0
    failures: int = 0
    lost: int = 0
    notes: list[str] = field(default_factory=list)


ROWS: dict[str, FaultRow] = {}


class FaultRecorder:
    """What one test ran: cycles, and anything lost (which must stay zero)."""

    def __init__(self, row: FaultRow) -> None:
        self.row = row

    def cycle(self, n: int = 1) -> None:
        self.row.cycles += n

    def lost(self, n: int) -> None:
        self.row.lost += n

    def note(self, text: str) -> None:
        """A figure printed under the table (e.g. memory at start and end)."""
        self.row.notes.append(text)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault(label): the fault a faults test injects")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.faults)


def _label(item: pytest.Item) -> str:
    marker = item.get_closest_marker("fault")
    return str(marker.args[0]) if marker else item.name


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> FaultRecorder:
    label = _label(request.node)
    return FaultRecorder(ROWS.setdefault(label, FaultRow(label)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if HERE in item.path.parents and report.failed:
        row = ROWS.setdefault(_label(item), FaultRow(_label(item)))
        row.failures += 1
        row.cycles = max(row.cycles, 1)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    rows = sorted(ROWS.values(), key=lambda r: _sort_key(r.label))
    width = max(len(r.label) for r in rows)
    write = terminalreporter.write_line
    terminalreporter.section("fault-injection summary")
    write(f"{'fault':<{width}}  cycles  failures  lost")
    for r in rows:
        write(f"{r.label:<{width}}  {r.cycles:>6}  {r.failures:>8}  {r.lost:>4}")
    total_lost = sum(r.lost for r in rows)
    write(f"{'total':<{width}}  {sum(r.cycles for r in rows):>6}  "
          f"{sum(r.failures for r in rows):>8}  {total_lost:>4}")
    for r in rows:
        for text in r.notes:
            write(f"{r.label.split(' ', 1)[0]} {text}")


def _sort_key(label: str) -> tuple[int, str]:
    head = label.split(" ", 1)[0].rstrip(".")
    return (int(head), label) if head.isdigit() else (999, label)
