"""Every Python example in docs/python-api.md runs as it is, against a real daemon."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_page_has_examples():
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_documented_example_runs(tachi_daemon, index):
    result = subprocess.run(
        [sys.executable, "-c", EXAMPLES[index]],
        env=tachi_daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"example {index} failed:\n{EXAMPLES[index]}\n{result.stderr}"
    assert result.stdout.strip(), "an example prints what it shows"
