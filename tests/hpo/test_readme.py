"""README.md "Using it" against the code: every documented command and flag exists, and a test runs the command.

The runs themselves live beside the feature they test; `RUN_BY` names them, and this test checks that each
named test file really invokes the command (so deleting that test makes this one fail).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]

# Command -> the test file that runs it through the CLI (tests.helpers.run_cli or a process, as `"word", "word"`
# arguments).
RUN_BY = {
    "model summary": "tests/cifarnet/test_model.py",
    "data check": "tests/cifarnet/test_data.py",
    "train": "tests/hpo/test_cli.py",
    "study check": "tests/hpo/test_cli.py",
    "study start": "tests/hpo/test_study_cli.py",
    "study join": "tests/hpo/test_cli.py",
    "study list": "tests/hpo/test_cli.py",
    "study status": "tests/hpo/test_cli.py",
    "study best": "tests/hpo/test_study_cli.py",
    "study summary": "tests/hpo/test_summary.py",
    "study verify": "tests/hpo/test_cli.py",
    "study finalists": "tests/hpo/test_finalists.py",
    "dashboard": "tests/hpo/test_cli.py",
    "report": "tests/dashboard/test_report.py",
    "retrain": "tests/hpo/test_retrain.py",
    "export": "tests/hpo/test_export.py",
}


def documented_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Using it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def command_of(line: str) -> str:
    words = line.split()[1:]
    command = [words[0]] + ([words[1]] if words[0] in ("study", "model", "data") else [])
    return " ".join(command)


def test_every_documented_command_is_known_and_run_by_a_test():
    commands = {command_of(line) for line in documented_lines()}
    # `hpo study list | status NAME | best NAME`: the alternatives after `|` are commands too.
    commands |= {f"study {alt.split()[0]}" for line in documented_lines() if "|" in line
                 for alt in line.split("|")[1:]}
    assert commands == set(RUN_BY), commands ^ set(RUN_BY)
    for command, test_file in RUN_BY.items():
        words = ", ".join(f'"{w}"' for w in command.split())
        assert re.search(rf'\[?{re.escape(words)}', (REPO / test_file).read_text()), (command, test_file)


@pytest.mark.parametrize("line", documented_lines(), ids=command_of)
def test_documented_flags_exist(line):
    command = command_of(line)
    help_text = run_cli(*command.split(), "--help").stdout
    for part in line.split("|"):
        sub = part.split()
        target = help_text if part is line.split("|")[0] else run_cli("study", sub[0], "--help").stdout
        for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", part):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", target), (line, flag)


def test_the_readme_test_command_installs_what_the_tests_need_and_ci_runs_exactly_it():
    """A new user's test command must pass on a fresh machine: the browser tests need Chromium, which only .ci/run
    used to install."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("Run the tests", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    assert block.startswith(".ci/browser-deps && ") and block.endswith("python -m pytest -q")
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == block
