"""Study files: the shipped ones parse and are sized as documented; bad files give one clear error."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import tomllib
from pathlib import Path

import pytest

from hpo.errors import StudyFileError
from hpo.definition.space import MODEL_PARAMS, Choice, apply_params, params_range
from hpo.definition.study_file import check_size_budget, load_study_file, spec_from_dict, to_toml
from tests.helpers import hpo_run, one_error_line, run_cli
from tests.hpo.studyfiles import TINY_STUDY, write_study

STUDIES = Path(__file__).resolve().parents[2] / "studies"


@pytest.mark.parametrize("name", ["smoke", "quick", "full"])
def test_to_toml_writes_back_what_a_study_file_holds(name):
    raw = tomllib.loads((STUDIES / f"{name}.toml").read_text())  # nested [train.model], inline [space] tables
    assert tomllib.loads(to_toml(raw)) == raw


@pytest.mark.parametrize("name", ["smoke", "quick", "full"])
def test_shipped_study_files_parse_and_round_trip(name):
    spec = load_study_file(STUDIES / f"{name}.toml")
    assert spec.name == name
    assert spec.data.test_size == 0  # trials never look at the test set
    assert spec_from_dict(spec.raw) == spec  # what is stored on the study rebuilds the same spec
    assert {"lr", "width1", "width2", "width3", "width4", "aug_strength"} <= set(spec.space.params)
    assert spec.space.params["lr"].log


def test_quick_study_is_sized_for_two_cpu_cores():
    spec = load_study_file(STUDIES / "quick.toml")
    # ~350 training images/s for an average member of the space in fp32 on 2 AVX2 cores (no native bf16):
    # successive halving (reduction factor 3) runs every rung 0, a third of rung 1 and a ninth of full runs.
    rf = spec.pruner.options["reduction_factor"]
    costs = [r.image_epochs for r in spec.rungs] + [spec.base.epochs * spec.data.train_size]
    per_trial = sum(c / rf ** i for i, c in enumerate(costs))
    assert 15 * 60 <= spec.n_trials * per_trial / 350 <= 40 * 60
    assert spec.pruner.kind == "successive-halving" and spec.rungs and spec.timeout <= 1800


def test_smoke_widths_are_tiny():
    spec = load_study_file(STUDIES / "smoke.toml")
    widths = [max(spec.space.params[f"width{i}"].choices) for i in range(1, 5)]
    assert isinstance(spec.space.params["width1"], Choice) and max(widths) <= 16


def test_overrides_are_written_into_the_stored_file(tmp_path):
    path = write_study(tmp_path, "s", "sqlite:///a.db")
    spec = load_study_file(path, storage="sqlite:///b.db", n_trials=7, timeout=60)
    assert (spec.storage, spec.n_trials, spec.timeout) == ("sqlite:///b.db", 7, 60.0)
    assert spec.raw["study"]["storage"] == "sqlite:///b.db" and spec.raw["study"]["trials"] == 7
    assert Path(spec.artifact_dir).is_absolute()


BAD_FILES = {
    "syntax error": ("[study\nname = 1", "TOML syntax error"),
    "unknown key": (None, "unknown key(s) 'colour'"),
    "low > high": (None, "low (0.5) > high (0.1)"),
    "unknown sampler": (None, "kind must be one of tpe, random, gp, cmaes, qmc; got 'bayes'"),
}


def _bad_file(tmp_path: Path, case: str) -> Path:
    changes = {"unknown key": {"study": {"colour": "red"}},
               "low > high": {"space": {"lr": {"low": 0.5, "high": 0.1}}},
               "unknown sampler": {"sampler": {"kind": "bayes"}}}.get(case, {})
    path = write_study(tmp_path, "bad", f"sqlite:///{tmp_path / 'bad.db'}", **changes)
    if BAD_FILES[case][0] is not None:
        path.write_text(BAD_FILES[case][0])
    return path


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_study_file_raises_one_clear_error(tmp_path, case):
    with pytest.raises(StudyFileError, match="bad.toml") as err:
        load_study_file(_bad_file(tmp_path, case))
    assert BAD_FILES[case][1] in str(err.value)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_cli_bad_study_file_one_line_exit_1(tmp_path, tiny_cifar, case):
    path = _bad_file(tmp_path, case)
    r = run_cli("study", "start", str(path), "--data-dir", str(tiny_cifar))
    assert BAD_FILES[case][1] in one_error_line(r)  # exit 1, one line, no traceback
    assert not (tmp_path / "bad.db").exists()  # nothing is created from a bad file


def test_space_bound_outside_training_limits_is_a_file_error(tmp_path):
    path = write_study(tmp_path, "wd", "sqlite:///x.db", space={"weight_decay": {"low": 0.0, "high": 1.5}})
    with pytest.raises(StudyFileError, match=r"\[space\] weight_decay.*1.5"):
        load_study_file(path)


def test_parameter_range_is_exact_over_every_searched_switch():
    """smoke.toml searches depthwise and dilation too: its plain-conv corners are the largest models."""
    from cifarnet.model import build_model, count_params

    spec = load_study_file(STUDIES / "smoke.toml")
    arch = {n: d.choices for n, d in spec.space.params.items() if n in MODEL_PARAMS}
    sizes = [count_params(build_model(apply_params(spec.base, dict(zip(arch, combo))).model))
             for combo in itertools.product(*arch.values())]
    assert check_size_budget(spec) == (min(sizes), max(sizes)) and max(sizes) > spec.max_params


def test_max_params_below_every_model_of_the_space_is_refused_up_front(tmp_path, tiny_cifar):
    path = write_study(tmp_path, "small", f"sqlite:///{tmp_path / 'small.db'}", study={"max_params": 1000})
    spec = load_study_file(path)
    low, _ = params_range(spec.space, spec.base)
    start = ["study", "start", str(path), "--data-dir", str(tiny_cifar)]
    # --ray: refused before Ray starts; in a process of its own, so a regression cannot start Ray in this one.
    for command, run in ((["study", "check", str(path)], run_cli), (start, run_cli),
                         ([*start, "--ray", "local"], hpo_run)):
        r = run(*command)
        assert (r.returncode, r.stdout) == (1, ""), command
        assert r.stderr == (f"error: study 'small': [study] max_params 1,000 is below the smallest model of [space] "
                            f"({low:,} parameters): every trial would be rejected before training\n"), command
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.toml"]  # no database, no artifacts


def test_committed_quick_study_resumes_only_with_its_own_file(tmp_path):
    """results/quick was made by studies/quick-v1.toml; the updated quick.toml is refused on that database."""
    import shutil

    import optuna

    from hpo.errors import HPOError
    from hpo.running.study import check_same_search

    db = tmp_path / "quick.db"
    shutil.copy(STUDIES.parent / "results" / "quick" / "hpo.db", db)
    stored = optuna.load_study(study_name="quick", storage=f"sqlite:///{db}").user_attrs["study_file"]
    check_same_search(stored, load_study_file(STUDIES / "quick-v1.toml"))
    with pytest.raises(HPOError, match=r"different \[space\], \[budget\], \[train\]"):
        check_same_search(stored, load_study_file(STUDIES / "quick.toml"))


# --- Hardening: every value that would misbehave later is refused by `hpo study check` up front ---------------

def _toml(value) -> str:
    """A TOML value for anything the fuzz produces (json's string escapes are valid TOML escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"


def _write_raw(path: Path, raw: dict) -> Path:
    loose = [f"{json.dumps(str(k))} = {_toml(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    tables = [f"[{json.dumps(str(k))}]\n" + "".join(f"{json.dumps(str(a))} = {_toml(b)}\n" for a, b in v.items())
              for k, v in raw.items() if isinstance(v, dict)]
    path.write_text("\n".join(loose) + "\n" + "\n".join(tables))
    return path


def _tiny(**changes) -> dict:
    """TINY_STUDY with table values replaced (a table given as a non-dict replaces the whole table)."""
    raw = copy.deepcopy(TINY_STUDY)
    raw["study"]["storage"] = "sqlite:///hardening.db"
    for table, values in changes.items():
        if isinstance(values, dict) and isinstance(raw.get(table), dict):
            raw[table].update(values)
        else:
            raw[table] = values
    return raw


BAD_VALUES = {
    "timeout nan": (_tiny(study={"timeout": math.nan}), "[study] timeout must be > 0"),
    "timeout inf": (_tiny(study={"timeout": math.inf}), "[study] timeout must be > 0"),
    "target_accuracy nan": (_tiny(study={"target_accuracy": math.nan}), "[study] target_accuracy must be > 0"),
    "huge heartbeat": (_tiny(workers={"heartbeat_interval": 10**9, "grace_period": 2 * 10**9}),
                       "[workers] heartbeat_interval must be > 0 and <= 3,600"),
    "huge grace": (_tiny(workers={"grace_period": 10**12}), "[workers] grace_period must be > 0"),
    "sampler seed 2**32": (_tiny(sampler={"seed": 2**32}), "[sampler] (kind tpe) seed must be >= 0"),
    "training seed 2**32": (_tiny(train={"seed": 2**32}), "[train] seed out of range: 4294967296"),
    "split seed 2**40": (_tiny(budget={"split_seed": 2**40}), "[budget] split_seed must be >= 0"),
    "step 0": (_tiny(space={"batch_size": {"low": 16, "high": 64, "step": 0}}), "space.batch_size.step must be"),
    "huge width range": (_tiny(space={"width4": {"low": 8, "high": 10**6}}), "[space] width4: 1000000 is not"),
    "huge epochs": (_tiny(budget={"epochs": 10**9}), "[budget] epochs must be > 0 and <= 10,000"),
    "reduction factor 1": (_tiny(pruner={"kind": "successive-halving", "reduction_factor": 1}),
                           "[pruner] (kind successive-halving)"),
    "name ../../x": (_tiny(study={"name": "../../x"}), "[study] name must be"),
    "absolute name": (_tiny(study={"name": "/tmp/x"}), "[study] name must be"),
    "name ..": (_tiny(study={"name": ".."}), "[study] name must be"),
    "name with newline": (_tiny(study={"name": "ok\nfake output"}), "[study] name must be"),
    "name with NUL": (_tiny(study={"name": "a\x00b"}), "[study] name must be"),
    "storage with newline": (_tiny(study={"storage": "sqlite:///a.db\nfake"}), "[study] storage must not contain"),
    "widths a string": (_tiny(train={"model": {"widths": "abcd"}}), "model.widths must be a list of integers"),
    "model not a table": (_tiny(train={"model": 5}), "[train] model must be a table"),
    "artifact_dir of unknown user": (_tiny(study={"artifact_dir": "~nouser-hpo-test/x"}),
                                     "artifact_dir / storage: not a usable path"),
    "space not a table": (_tiny(space=[1, 2]), "space must be a [space] table"),
    "sampler kind a list": (_tiny(sampler={"kind": ["tpe"]}), "[sampler] kind must be one of"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_value_is_refused_by_the_loader(tmp_path, case):
    raw, message = BAD_VALUES[case]
    with pytest.raises(StudyFileError) as err:
        load_study_file(_write_raw(tmp_path / "s.toml", raw))
    assert message in str(err.value)


def test_every_bad_value_is_one_error_line_from_hpo_study_check(tmp_path):
    """`hpo study check` (its console entry point, once per file, in this process)."""
    files = {case: str(_write_raw(tmp_path / f"{i}.toml", raw)) for i, (case, (raw, _)) in
             enumerate(BAD_VALUES.items())}
    files["a directory"] = str(tmp_path)
    files["a binary file"] = str(tmp_path / "binary.toml")
    (tmp_path / "binary.toml").write_bytes(bytes(range(256)) * 4)
    errors = {}
    for case, path in files.items():
        r = run_cli("study", "check", path)
        errors[case] = r.stderr
        assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (case, r.stderr)
        assert "Traceback" not in r.stderr and "unexpected" not in r.stderr and r.stdout == "", (case, r.stderr)
        if case in BAD_VALUES:
            assert BAD_VALUES[case][1] in r.stderr, (case, r.stderr)
    assert "is a directory, not a study file" in errors["a directory"]
    assert "is not a text file" in errors["a binary file"]


def test_installed_hpo_study_check_refuses_a_bad_value(tmp_path):
    """The console script itself, a process of its own (every case in this process: the test above)."""
    r = hpo_run("study", "check", str(_write_raw(tmp_path / "s.toml", BAD_VALUES["name with newline"][0])))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert r.stdout == ""


JUNK = [math.nan, math.inf, -math.inf, -1, 0, 1, 3, 0.5, 2**63 - 1, -(2**63), 1e308, "", "abcd", "../..", "a\nb",
        "~nouser-hpo-fuzz/x", "\x00", "sgd", "tpe", True, False, [], [1, 2], [4, 8, 8, 8], ["a", 1], {}, {"a": 1},
        {"low": 1, "high": 0}, {"choices": []}, {"low": 0.1, "high": 0.2, "log": True, "step": 2}, [[[[[1]]]]]]


def _mutate(raw: dict, rng: random.Random) -> dict:
    """Replace, delete or add a value somewhere in the study file (tables, keys, nested space entries)."""
    node, depth = raw, 0
    while isinstance(node, dict) and node and rng.random() < 0.7 and depth < 3:
        key = rng.choice(sorted(node, key=str))
        if not isinstance(node[key], dict):
            break
        node, depth = node[key], depth + 1
    if not isinstance(node, dict):
        return raw
    action = rng.random()
    if action < 0.15 and node:
        del node[rng.choice(sorted(node, key=str))]
    elif action < 0.25:
        node[rng.choice(["colour", "seed", "kind", "name", "model", "x.y"])] = rng.choice(JUNK)
    elif node:
        node[rng.choice(sorted(node, key=str))] = copy.deepcopy(rng.choice(JUNK))
    return raw


def test_fuzzed_study_files_raise_only_study_file_errors(tmp_path):
    rng = random.Random(14)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(300):
        raw = _tiny()
        for _ in range(rng.randint(1, 4)):
            raw = _mutate(raw, rng)
        path = tmp_path / f"{i}.toml"
        if i % 25 == 0:  # whole-file damage: random bytes, or nesting deeper than any parser recursion
            path.write_bytes(bytes(rng.randrange(256) for _ in range(200)) if i % 50 else b"a = " + b"[" * 5000)
        else:
            _write_raw(path, raw)
        for load in (lambda: load_study_file(path), lambda: spec_from_dict(raw)):
            try:
                load()
                outcomes["ok"] += 1
            except StudyFileError as e:
                assert "\n" not in str(e).replace(str(path), ""), str(e)
                outcomes["refused"] += 1
    assert outcomes["refused"] > 300 and outcomes["ok"] > 10  # the fuzz reaches both outcomes


def test_fitting_keeps_the_proportions_and_is_the_replay_of_the_trial():
    from cifarnet.config import ModelConfig, TrainConfig
    from hpo.definition.space import fit_widths
    from cifarnet.model import count_params_of

    cfg = TrainConfig(model=ModelConfig(widths=(32, 64, 128, 128), depthwise=False))
    assert count_params_of(cfg.model) > 200_000
    fitted = fit_widths(cfg, 200_000)
    assert count_params_of(fitted.model) <= 200_000 and fitted.replace(model=cfg.model) == cfg
    ratios = [f / w for f, w in zip(fitted.model.widths, cfg.model.widths)]
    assert max(ratios) - min(ratios) < 0.1  # one common factor, up to rounding to multiples of 4
    assert fit_widths(cfg, 200_000) == fitted  # deterministic: a replay gets the model the trial trained
    small = TrainConfig(model=ModelConfig(widths=(8, 8, 8, 8)))
    assert fit_widths(small, 200_000) is small
