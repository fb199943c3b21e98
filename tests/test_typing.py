"""Step and Sequence are generic in their data, as mypy (strict) sees them."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import ROOT

pytest.importorskip("mypy", reason="mypy is installed in the primary environment only")

MODULE = "tests/typing/typed_data.py"


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_mypy_types_a_steps_and_a_sequences_data_by_their_parameter(python):
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--python-version", python, "--no-error-summary",
         "--cache-dir", str(ROOT / "var" / f"mypy-typing-{python}"), MODULE],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    source = (ROOT / MODULE).read_text().splitlines()
    revealed = {
        int(m["line"]): m["type"]
        for m in (re.match(r".*:(?P<line>\d+): note: Revealed type is \"(?P<type>.*)\"", x) for x in lines)
        if m
    }  # fmt: skip
    expected = {
        number: line.split("# expect: ")[1]
        for number, line in enumerate(source, 1)
        if "# expect: " in line
    }
    assert set(revealed) == set(expected), done.stdout
    for number, wanted in expected.items():
        if wanted == "OrderData":
            assert revealed[number].startswith("TypedDict(tests.typing.typed_data.OrderData,")
        else:
            assert revealed[number] == "dict[str, Any]", revealed[number]
    errors = sorted(int(x.split(":")[1]) for x in lines if ": error:" in x)
    misuse = [n for n, line in enumerate(source, 1) if "# error:" in line]
    assert errors == misuse, done.stdout
