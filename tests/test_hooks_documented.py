"""docs/plugins.md documents every hook in tachi/hookspecs.py with its arguments,
and its complete example plugin, with its own tests and pyproject.toml, runs."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tachi import hookspecs

DOC = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
PROSE = re.sub(r"```.*?```", "", DOC, flags=re.S)  # examples may take fewer arguments
HOOKS = {
    name: list(inspect.signature(fn).parameters)
    for name, fn in vars(hookspecs).items()
    if name.startswith("tachi_") and hasattr(fn, "tachi_spec")
}


def arguments(text: str) -> list[str]:
    """``a, b=…, c`` -> ``[a, b, c]``."""
    return [part.split("=")[0].strip() for part in text.split(",") if part.strip()]


def test_there_are_hooks_to_check():
    assert len(HOOKS) >= 13


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_plugin_hooks_are_documented(hook):
    table = re.findall(rf"^\| \[`{hook}\(([^)`]*)\)`\]", DOC, re.M)
    assert table, f"{hook} is missing from the hook table of docs/plugins.md"
    assert [arguments(a) for a in table] == [HOOKS[hook]], f"{hook}'s arguments in the table"
    assert re.search(rf"^###.*`{hook}`", DOC, re.M), f"no section names {hook}"
    # Wherever the page's prose writes the hook with arguments, they are the spec's.
    for written in re.findall(rf"`(?:[\w.]+\.)?{hook}\(([^)`]*)\)", PROSE):
        assert arguments(written) == HOOKS[hook], f"{hook}({written}) in docs/plugins.md"


def test_the_hook_table_lists_no_hook_that_does_not_exist():
    listed = set(re.findall(r"^\| \[`(tachi_\w+)\(", DOC, re.M))
    assert listed == set(HOOKS)


def block(first_line: str, lang: str) -> str:
    for text in re.findall(rf"```{lang}\n(.*?)```", DOC, re.S):
        if text.startswith(first_line):
            return text
    raise AssertionError(f"no {lang} block starting with {first_line!r}")


def test_the_complete_example_plugin_passes_its_documented_tests(tmp_path):
    """The plugin, its pyproject.toml and its tests as the page shows them, installed
    as pip would (a module and a dist-info with the pyproject's entry points), run
    with pytest under the pyproject's settings: every test passes, and no
    deprecation warning (pytest-asyncio's unset loop scope) is left."""
    pyproject = block("# pyproject.toml", "toml")
    project = tomllib.loads(pyproject)["project"]
    module = block("# tachi_", "python")
    name = re.match(r"# (\w+)\.py", module).group(1)
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{name}.py").write_text(module)
    info = site / f"{name}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    entry_points = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["tachi"].items())
    (info / "entry_points.txt").write_text(f"[tachi]\n{entry_points}")
    checkout = tmp_path / "plugin"
    (checkout / "tests").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text(pyproject)
    test_source = block("# tests/test_", "python")
    (checkout / "tests" / "test_example.py").write_text(test_source)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            "-W",
            "error::pytest.PytestDeprecationWarning",
            "tests",
        ],
        cwd=checkout,
        env={**__import__("os").environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b2 passed\b", result.stdout), result.stdout
    assert "warning" not in result.stdout.lower(), result.stdout
