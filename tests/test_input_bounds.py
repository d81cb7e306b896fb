"""Inputs shaped to exhaust the machine are one `error:` line, refused by structure before the costly step runs:
TOML files (a study file, a run file, the dashboard config) bounded in size, dotted-key parts and nesting before
tomllib sees them; integers Python will not convert; repeated [space] choices enumerated once; CIFAR label lists
checked flat before numpy expands them; --threads, --workers, --trials-per-device and `hpo export --batch` bounded.
The study-file fuzz of earlier issues extended with these cases runs in a process of its own under a memory and
CPU limit, so a case that escapes the bounds fails the test instead of the machine."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import pickle
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import hpo.definition.space as space_module
from cifarnet.config import MAX_TOML_BYTES, MAX_TOML_KEY_PARTS, MAX_TOML_NESTING, load_run_file, read_toml_bounded
from cifarnet.data import load_cifar10
from cifarnet.errors import ConfigError, DataError
from dashboard.app import DashboardConfig
from hpo.commands.options import MAX_EXPORT_BATCH, MAX_THREADS, MAX_WORKERS
from hpo.definition.study_file import check_size_budget, load_study_file, to_toml
from hpo.errors import HPOError, StudyFileError
from tests.conftest import write_cifar_batches
from tests.hpo.studyfiles import TINY_STUDY

REPO = Path(__file__).resolve().parents[1]


def _study_text(**tables) -> str:
    """TINY_STUDY on a SQLite file, the tables given replacing its own."""
    raw = {**copy.deepcopy(TINY_STUDY), **tables}
    raw["study"]["storage"] = "sqlite:///bounds.db"
    return to_toml(raw)


def _dotted(parts: int, sep: str = ".") -> str:
    return sep.join("a" for _ in range(parts))


# A process that reads TOML, given 1 GiB of address space (the 50,000-part key needed more than 12 GB) and two
# minutes of CPU: a case the bounds miss ends it with MemoryError or a signal instead of exhausting the machine.
_LIMITS = ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
           "resource.setrlimit(resource.RLIMIT_CPU, (120, 120))")


# Each: text a reader is given, and words its one-line error must hold. The sizes are just past the bounds, so
# without them these parse (and the test fails on "no error"), never exhausting the machine the test runs on.
SHAPES = {
    "too large": ("# padding\n" * (MAX_TOML_BYTES // 10 + 1), f"more than {MAX_TOML_BYTES:,} bytes"),
    "dotted key": (f"{_dotted(MAX_TOML_KEY_PARTS + 1)} = 1\n", f"more than {MAX_TOML_KEY_PARTS} parts"),
    "dotted key, spaced and quoted": (
        " . ".join(['"a b"', "'c'", '"x.y"'] * 11) + " = 1\n", f"more than {MAX_TOML_KEY_PARTS} parts"),
    "dotted table header": (f"[{_dotted(MAX_TOML_KEY_PARTS + 1)}]\n", f"more than {MAX_TOML_KEY_PARTS} parts"),
    "dotted key in an inline table": (
        f'p = {{ s = "#]}}\\"", {_dotted(MAX_TOML_KEY_PARTS + 1)} = 1 }}\n', f"more than {MAX_TOML_KEY_PARTS} parts"),
    "nested arrays": ("a = " + "[" * (MAX_TOML_NESTING + 1) + "]" * (MAX_TOML_NESTING + 1) + "\n",
                      f"nested more than {MAX_TOML_NESTING} deep"),
    "nested inline tables": ("a = " + "{b = " * (MAX_TOML_NESTING + 1) + "1" + "}" * (MAX_TOML_NESTING + 1) + "\n",
                             f"nested more than {MAX_TOML_NESTING} deep"),
    "5,000-digit integer": ("a = " + "7" * 5000 + "\n", "value out of range"),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_every_toml_reader_refuses_costly_shapes_in_one_line(tmp_path, case):
    text, words = SHAPES[case]
    path = tmp_path / "f.toml"
    path.write_text(text)
    readers = {StudyFileError: lambda: load_study_file(path), ConfigError: lambda: load_run_file(path),
               HPOError: lambda: DashboardConfig.build({}, path)}
    for error, read in readers.items():
        with pytest.raises(error) as e:
            read()
        assert words in str(e.value) and "\n" not in str(e.value), (error, str(e.value))


def test_a_reader_never_reads_more_than_its_bound():
    """A device without end is refused after MAX_TOML_BYTES + 1 bytes, not read until memory runs out (in a
    process of its own under a memory limit, so a reader without the bound fails this test, not the machine)."""
    code = (f"{_LIMITS}\nfrom cifarnet.config import read_toml_bounded\n"
            "try:\n    read_toml_bounded('/dev/zero')\nexcept Exception as e:\n    print(type(e).__name__, e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout == f"ConfigError /dev/zero is too large for a config file: more than {MAX_TOML_BYTES:,} bytes\n", (
        r.stdout, r.stderr[-500:])


def test_ordinary_toml_still_reads(tmp_path):
    """Floats (two dotted 'parts'), strings full of dots, brackets and quotes, the shipped study files."""
    dots = ".".join("abcdefghijklmnopqrstuvwxyzabcdefg")
    text = (f'a.b.c = [1.5, 2.5e-3, [[1]], {{ x.y = "{dots}" }}]\n' + "s = '''" + "[{" * 40 + "'''\n"
            + 'u = """' + "a." * 40 + '\\""" " """\n' + "# " + "x." * 40 + "\n")
    (tmp_path / "ordinary.toml").write_text(text)
    got = read_toml_bounded(tmp_path / "ordinary.toml")
    assert got["a"]["b"]["c"][3]["x"]["y"] == dots and got["u"].endswith('a.""" " ')
    for study in sorted((REPO / "studies").glob("*.toml")):
        assert load_study_file(study).name


def test_a_dashboard_config_without_its_table_is_one_line(tmp_path):
    path = tmp_path / "dash.toml"
    path.write_text("optuna_dashboard = 5\n")
    with pytest.raises(HPOError, match=r"optuna_dashboard must be an \[optuna_dashboard\] table, got 5"):
        DashboardConfig.build({}, path)


# ---- the study-file fuzz, extended with the shapes above at full size ----

_DRIVER = _LIMITS + """
import json, sys
from hpo.definition.study_file import load_study_file
from hpo.errors import StudyFileError
out = {}
for path in json.loads(sys.argv[1]):
    try:
        load_study_file(path)
        out[path] = ["ok", ""]
    except StudyFileError as e:
        out[path] = ["refused", str(e)]
    except BaseException as e:
        out[path] = [type(e).__name__, str(e)[:300]]
print(json.dumps(out))
"""


def _costly_study_file(rng: random.Random) -> tuple[str, str]:
    """A valid study file with one item-8 shape put somewhere in it, at a size that would exhaust the parser."""
    lines = _study_text().splitlines()
    where = rng.randrange(len(lines) + 1)
    kind = rng.choice(["key", "header", "inline key", "integer", "nesting", "oversize"])
    parts = rng.choice([MAX_TOML_KEY_PARTS + 1, 5000, 31_000])
    sep = rng.choice([".", " . ", "\t.", '."b".', ".'c'."])
    key = sep.join(["a"] * (parts // max(1, sep.count(".")) + 1))
    if kind == "key":
        lines.insert(where, f"{key} = 1")
    elif kind == "header":
        lines.insert(where, rng.choice(["[{}]", "[[{}]]"]).format(key))
    elif kind == "inline key":
        lines.insert(where, f'zz = {{ s = "#{{[", {key} = 1 }}')
    elif kind == "integer":
        lines.insert(where, f"zz = {rng.choice(['', '-', '+'])}{'9' * rng.choice([4301, 5000, 30_000])}")
    elif kind == "nesting":
        depth = rng.choice([MAX_TOML_NESTING + 1, 5000, 30_000])
        opener, closer = rng.choice([("[", "]"), ("{a = ", "}")])
        lines.insert(where, f"zz = {opener * depth}1{closer * depth * rng.randrange(2)}")
    else:  # the issue's own file: 100 KB, one dotted key of 50,000 parts
        lines.insert(where, f"{_dotted(50_000)} = 1")
    return kind, "\n".join(lines) + "\n"


def test_fuzzed_costly_study_files_end_in_study_file_errors_within_bounded_memory(tmp_path):
    rng = random.Random(8)
    files = {}
    for i in range(60):
        kind, text = _costly_study_file(rng)
        path = tmp_path / f"{i}-{kind.replace(' ', '-')}.toml"
        path.write_text(text)
        files[str(path)] = kind
    r = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(list(files))], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, f"the loader died (signal {-r.returncode}, resource limit?): {r.stderr[-2000:]}"
    outcomes = json.loads(r.stdout)
    for path, (outcome, message) in outcomes.items():
        assert outcome == "refused", (files[path], outcome, message)
        assert "\n" not in message and "unexpected" not in message, message
    assert set(files.values()) == {"key", "header", "inline key", "integer", "nesting", "oversize"}


# ---- repeated [space] choices ----

SWITCHES = {"depthwise2": [True, False], "depthwise3": [False, True], "downsample1": ["conv", "maxpool"],
            "downsample2": ["conv1x1", "conv"]}


def test_repeated_space_choices_are_enumerated_once(tmp_path, monkeypatch):
    """200 copies of each switch's choices: params_range builds each distinct model once (2**4 switch combinations
    at the narrowest and at the widest widths) instead of enumerating 200**4 combinations."""
    distinct, repeated = tmp_path / "distinct.toml", tmp_path / "repeated.toml"
    lr = TINY_STUDY["space"]["lr"]
    distinct.write_text(_study_text(space={"lr": lr, **{name: {"choices": v} for name, v in SWITCHES.items()}}))
    repeated.write_text(_study_text(space={"lr": lr, **{name: {"choices": v * 100} for name, v in SWITCHES.items()}}))
    spec = load_study_file(repeated)
    assert all(len(spec.space.params[name].choices) == 200 for name in SWITCHES)
    expected = check_size_budget(load_study_file(distinct))

    calls = {"configs": 0}
    apply_params = space_module.apply_params

    def counted(*args, **kwargs):
        calls["configs"] += 1
        assert calls["configs"] <= 2 * 2 ** len(SWITCHES), "repeated choices are enumerated"
        return apply_params(*args, **kwargs)

    monkeypatch.setattr(space_module, "apply_params", counted)
    assert check_size_budget(spec) == expected
    assert calls["configs"] == 2 * 2 ** len(SWITCHES)


# ---- CIFAR label lists ----

def _shared_nested_labels(depth: int, fanout: int = 10) -> list:
    """A list pickle stores once per level: `fanout ** depth` labels in a few hundred bytes."""
    labels: list = [0] * fanout
    for _ in range(depth - 1):
        labels = [labels] * fanout
    return labels


@pytest.mark.parametrize("labels, why", [
    (_shared_nested_labels(7), "10**7 labels shared in a few hundred bytes"),
    ([[0] * 10] * 10, "nested, of the right length"),
    ([True] * 10, "booleans"),
    ([0] * 9 + [10], "out of range"),
    ([0] * 9 + [10 ** 5000], "a huge integer"),
    ([0] * 11, "too long"),
    (np.zeros((10, 1), np.int64), "a 2-D array"),
    (np.zeros(10, np.float64), "floats"),
    ("0123456789", "a string"),
])
def test_a_crafted_label_list_is_refused_before_it_is_expanded(tmp_path, labels, why):
    root = write_cifar_batches(tmp_path / "d")
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "wb") as f:
        pickle.dump({"data": np.zeros((10, 3072), np.uint8), "labels": labels}, f)
    assert batch.stat().st_size < 40_000
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"data_batch_1: 'labels' must be 10 integers in 0\.\.9"):
            load_cifar10(root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{why}: {peak / 2**20:.0f} MiB to refuse a {batch.stat().st_size:,}-byte file"


def test_flat_labels_as_ints_or_an_integer_array_still_load(tmp_path):
    root = write_cifar_batches(tmp_path / "d")
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "wb") as f:
        pickle.dump({"data": np.zeros((10, 3072), np.uint8), "labels": np.arange(10, dtype=np.uint8)}, f)
    data = load_cifar10(root)
    assert data.train.labels[:10].tolist() == list(range(10)) and str(data.train.labels.dtype) == "torch.int64"


# ---- command-line counts ----

def _run_cli(*args: str) -> tuple[int, str]:
    from hpo.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


@pytest.mark.parametrize("args, words", [
    (["study", "start", "s.toml", "--threads", str(MAX_THREADS + 1)], "--threads"),
    (["study", "join", "s.toml", "--threads", "100000"], "--threads"),
    (["study", "start", "s.toml", "--workers", str(MAX_WORKERS + 1)], f"not a number from 1 to {MAX_WORKERS}"),
    (["study", "start", "s.toml", "--workers", "9" * 5000], f"not a number from 1 to {MAX_WORKERS}"),
    (["study", "start", "s.toml", "--workers", "²"], f"not a number from 1 to {MAX_WORKERS}"),
    (["study", "join", "s.toml", "--trials-per-device", str(MAX_WORKERS + 1)], "--trials-per-device"),
    (["export", "run", "--batch", str(MAX_EXPORT_BATCH + 1)], "--batch"),
    (["export", "run", "--batch", "9" * 5000], "--batch"),
])
def test_unbounded_counts_are_one_error_line(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    code, stderr = _run_cli(*args)
    assert code != 0 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert words in stderr and "unexpected" not in stderr, stderr


@pytest.mark.parametrize("case", ["5,000-digit integer", "dotted key", "too large"])
def test_costly_files_are_one_error_line_from_each_command(tmp_path, monkeypatch, case):
    """hpo study check / hpo train --config / hpo dashboard --config, through the CLI's entry point."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.toml").write_text(SHAPES[case][0])
    for args in (["study", "check", "f.toml"], ["train", "--config", "f.toml", "-o", "run"],
                 ["dashboard", "--storage", "sqlite:///none.db", "--config", "f.toml", "--port", "0"]):
        code, stderr = _run_cli(*args)
        assert code == 1 and stderr.startswith("error: ") and stderr.count("\n") == 1, (args, stderr)
        assert SHAPES[case][1] in stderr and "unexpected" not in stderr, (args, stderr)
    assert not (tmp_path / "run").exists() and not (tmp_path / "none.db").exists()
