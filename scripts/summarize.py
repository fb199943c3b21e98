"""Add up the JUnit reports of the pytest passes: one line per pass, then the total.

    python scripts/summarize.py [--total] NAME...

With --total only the last line is printed: ``tests: N passed, N failed, N skipped``.
Otherwise each pass's line has its time and, under it, the versions it ran (the
``versions`` file ``scripts/pytest_pass.sh`` writes), so a failure on one dependency
world reads as such.

A pass named but without a report (it crashed before pytest wrote one) counts as failed.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / "test-output"


def counts(report: Path) -> tuple[int, int, int, float]:
    """(passed, failed, skipped, seconds) in one JUnit report; errors count as failed."""
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = failed = skipped = 0
    seconds = 0.0
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
        seconds += float(suite.get("time", 0))
    return tests - failed - skipped, failed, skipped, seconds


def versions(folder: Path) -> str | None:
    try:
        return (folder / "versions").read_text().strip() or None
    except OSError:
        return None


def main() -> int:
    args = sys.argv[1:]
    quiet = "--total" in args
    names = [a for a in args if a != "--total"]
    say = (lambda line: None) if quiet else print
    total = [0, 0, 0]
    broken = False
    say("== pytest passes")
    for name in names:
        folder = OUTPUT / name
        if (folder / "skipped").exists():
            why = (folder / "skipped").read_text().strip() or "no PostgreSQL"
            say(f"   {name:<34} skipped ({why})")
            continue
        report = folder / "junit.xml"
        ran = versions(folder)
        if not report.exists():
            say(f"   {name:<34} NO REPORT (the run did not finish)")
            broken = True
        else:
            passed, failed, skipped, seconds = counts(report)
            total = [total[0] + passed, total[1] + failed, total[2] + skipped]
            say(
                f"   {name:<34} {passed} passed, {failed} failed, {skipped} skipped"
                f" in {seconds:.0f}s"
            )
        if ran:
            say(f"      {ran}")
    print(f"tests: {total[0]} passed, {total[1]} failed, {total[2]} skipped")
    return 1 if broken or total[1] else 0


if __name__ == "__main__":
    sys.exit(main())
