"""Add up the JUnit reports of the pytest passes: one line per pass, then the total.

    python scripts/summarize.py NAME...

A pass named but without a report (it crashed before pytest wrote one) counts as failed.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / "test-output"


def counts(report: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) in one JUnit report; errors count as failed."""
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = failed = skipped = 0
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return tests - failed - skipped, failed, skipped


def main() -> int:
    total = [0, 0, 0]
    broken = False
    print("== pytest passes")
    for name in sys.argv[1:]:
        folder = OUTPUT / name
        if (folder / "skipped").exists():
            print(f"   {name:<16} skipped (no PostgreSQL)")
            continue
        report = folder / "junit.xml"
        if not report.exists():
            print(f"   {name:<16} NO REPORT (the run did not finish)")
            broken = True
            continue
        passed, failed, skipped = counts(report)
        total = [total[0] + passed, total[1] + failed, total[2] + skipped]
        print(f"   {name:<16} {passed} passed, {failed} failed, {skipped} skipped")
    print(f"tests: {total[0]} passed, {total[1]} failed, {total[2]} skipped")
    return 1 if broken or total[1] else 0


if __name__ == "__main__":
    sys.exit(main())
