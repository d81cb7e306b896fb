"""Retraining a study's trial: exact config replay, stop at target, resume after a kill, artifacts, CLI errors.

The study under test is a real one, run by the study service (`hpo.running.worker.start_study`, what `hpo study start`
calls) on the tiny CIFAR set: its trials carry the user_attrs the objective writes and the study its
"study_file", so retrain is tested against exactly what a search leaves in storage. It is trained once for the
module (trained_study) and each test gets a copy of its database and artifacts (sqlite_study).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from cifarnet.config import TrainConfig, load_run_file, to_toml
from cifarnet.train import load_checkpoint
from hpo.commands.retrain import describe_result
from hpo.definition.paths import resolve_artifact_dir
from hpo.results.retrain import RetrainError, RetrainOptions, prepare_retrain, retrain_best
from hpo.results.retrain_records import retrain_records
from hpo.definition.study_file import load_study_file
from hpo.running.worker import WorkerOptions, start_study
from tests.conftest import TINY_DATA, TINY_TRAIN
from tests.helpers import hpo_popen, one_error_line, run_cli

TIMING_KEYS = ("train_time_s", "eval_time_s", "images_per_s")  # the only metrics allowed to differ between runs
N_TRIALS = 4
NAME = "retrain-tiny"  # the module's trained study (trained_study); each test works on a copy of it
# max_params sits between width4 = 8 and 12: every trial with width4 = 12 is narrowed to fit before training (so is
# trial 0, the original CifarNet, whose width4 = 128 moves to the nearest choice, 12), and its retrain must replay
# that narrowed model. The last trial is a PRUNED one (stopped after its first epoch).
STUDY_TOML = """
[study]
name = "{name}"
storage = "{url}"
trials = {n_trials}
artifact_dir = "{root}/artifacts"
max_params = 4000

[sampler]
kind = "random"
seed = 3

[pruner]
kind = "none"

[budget]
epochs = 2
train_size = 100
val_size = 40

[train]
batch_size = 32
lr = 0.05
channels_last = false

[train.model]
widths = [4, 8, 8, 8]

[space]
lr = {{ low = 0.02, high = 0.2, log = true }}
width4 = {{ choices = [8, 12] }}
label_smoothing = {{ low = 0.0, high = 0.1 }}
"""


def make_study(url: str, name: str, root: Path, data: Path) -> optuna.Study:
    """Run a real study of N_TRIALS trials (2 epochs each on the tiny set) through the study service."""
    path = root / f"{name}.toml"
    path.write_text(STUDY_TOML.format(name=name, url=url, n_trials=N_TRIALS, root=root))
    start_study(load_study_file(path), WorkerOptions(data_dir=str(data), device="cpu", threads=1))
    study = optuna.load_study(study_name=name, storage=url)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * N_TRIALS, states
    assert any("fitted_widths" in t.user_attrs for t in study.trials)
    last = study.trials[-1]  # trial N_TRIALS: as a pruner leaves a trial (its parameters, one epoch, no value)
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params=last.params,
                                              distributions=last.distributions,
                                              user_attrs={**last.user_attrs, "curve": last.user_attrs["curve"][:1]}))
    return study


@pytest.fixture(scope="module")
def trained_study(tmp_path_factory, tiny_cifar) -> Path:
    """A folder holding study.db (NAME, trained once for the module by make_study), its artifacts/ and its study
    file; tests work on copies of it (copy_study), so each may add trials and retrains of its own."""
    root = tmp_path_factory.mktemp("trained_study")
    db = root / "study.db"
    make_study(f"sqlite:///{db}", NAME, root, tiny_cifar)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in study.db itself before it is copied
    return root


def copy_study(trained: Path, folder: Path) -> tuple[optuna.Study, str]:
    """The trained study copied into `folder` (folder/study.db, its artifacts/ beside it, folder/NAME.toml
    naming that database): a database copied with its artifacts works in its new place (README, Paths)."""
    shutil.copytree(trained, folder, dirs_exist_ok=True)
    url = f"sqlite:///{folder / 'study.db'}"
    (folder / f"{NAME}.toml").write_text(STUDY_TOML.format(name=NAME, url=url, n_trials=N_TRIALS, root=folder))
    return optuna.load_study(study_name=NAME, storage=url), url


@pytest.fixture
def sqlite_study(trained_study, tmp_path) -> tuple[optuna.Study, str]:
    return copy_study(trained_study, tmp_path)


def _options(url: str, data: Path, out: Path, **kw) -> RetrainOptions:
    return RetrainOptions(storage=url, out=out, data_dir=str(data), device="cpu", progress=False, **kw)


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def test_replay_gives_the_searched_config_with_only_epochs_and_seed_changed(sqlite_study, tiny_cifar, tmp_path):
    study, url = sqlite_study
    best = study.best_trial.number
    trial = next(t for t in study.trials if t.state == TrialState.COMPLETE and t.number != best)  # a chosen one
    plan = prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "run", trial=trial.number,
                                                      max_epochs=7))
    stored = TrainConfig.from_dict(trial.user_attrs["config"])
    assert plan.trial.number == trial.number
    assert plan.cfg.epochs == 7  # the schedule is sized for --max-epochs
    assert plan.cfg.replace(epochs=stored.epochs) == stored
    assert plan.cfg.lr == trial.params["lr"]
    fitted = trial.user_attrs.get("fitted_widths")  # narrowed to max_params: the retrain replays the narrowing
    assert plan.cfg.model.widths[3] == (fitted["trained"][3] if fitted else trial.params["width4"])
    assert plan.data.val_size == 0 and plan.data.test_size is None and plan.data.train_size is None
    assert prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "r2")).trial.number == best
    assert prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "r3", seed=5)).cfg.seed == 5
    by_file = prepare_retrain(str(tmp_path / f"{study.study_name}.toml"), RetrainOptions(out=tmp_path / "r4"))
    assert (by_file.study.study_name, by_file.trial.number) == (study.study_name, best)  # a studies/*.toml path


def test_replay_refuses_a_trial_whose_stored_config_differs(sqlite_study, tiny_cifar, tmp_path):
    study, url = sqlite_study
    good = study.best_trial
    tampered = {**good.user_attrs["config"], "weight_decay": 0.01}
    study.add_trial(optuna.trial.create_trial(params=good.params, distributions=good.distributions, value=0.1,
                                              user_attrs={"config": tampered}))
    with pytest.raises(RetrainError, match="differs in: weight_decay"):
        prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "run", trial=N_TRIALS + 1))


def test_a_trial_stored_before_a_config_field_existed_replays_to_its_default(sqlite_study, tiny_cifar, tmp_path):
    """Trials of older versions (results/quick/hpo.db) lack fields added since, e.g. tta_shift; the default is
    what they trained with, so they still retrain. A stored key this version does not know is refused."""
    study, url = sqlite_study
    good = study.best_trial
    older = {k: v for k, v in good.user_attrs["config"].items() if k != "tta_shift"}
    unknown = {**good.user_attrs["config"], "dropout": 0.5}
    for attrs in (older, unknown):
        study.add_trial(optuna.trial.create_trial(params=good.params, distributions=good.distributions, value=0.1,
                                                  user_attrs={"config": attrs}))
    plan = prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "run", trial=N_TRIALS + 1))
    assert plan.trial.number == N_TRIALS + 1 and plan.cfg.tta_shift == 0
    with pytest.raises(RetrainError, match="stored config does not load.*dropout"):
        prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "run2", trial=N_TRIALS + 2))


def test_the_committed_quick_study_of_an_older_version_still_reads_and_retrains(tiny_cifar, tmp_path):
    """results/quick/hpo.db predates retrain records ("retrain" user_attr) and tta_shift: `hpo study status`
    still headlines its 85% retrain, and its best trial still replays for a retrain."""
    db = tmp_path / "quick.db"
    shutil.copy(Path(__file__).resolve().parents[2] / "results" / "quick" / "hpo.db", db)
    url = f"sqlite:///{db}"
    status = run_cli("study", "status", "quick", "--storage", url)
    assert status.returncode == 0, status.stderr
    assert "retrain trial 11: reached target 0.85 at epoch 29, best test acc 0.8561" in status.stdout
    assert status.stdout.rstrip().endswith("<- reference")
    plan = prepare_retrain("quick", _options(url, tiny_cifar, tmp_path / "run"))
    assert plan.trial.number == 11 and plan.cfg.tta_shift == 0 and plan.cfg.model.widths == (16, 48, 64, 96)


def test_stops_at_first_epoch_reaching_target_and_writes_the_run_folder(sqlite_study, tiny_cifar, tmp_path):
    study, url = sqlite_study
    out = tmp_path / "run"
    result = retrain_best(study.study_name, _options(url, tiny_cifar, out, target=0.2, max_epochs=10))
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    accs = [h["test_acc"] for h in history]
    assert result.status == "reached" and result.trial == study.best_trial.number
    assert result.epochs_to_target == result.epochs_run == len(history) < 10
    assert accs[-1] >= 0.2 and all(a < 0.2 for a in accs[:-1])
    cfg, data = load_run_file(out / "config.toml")
    assert cfg.epochs == 10 and data.val_size == 0  # schedule sized for max epochs, not for where it stopped
    assert "sized for --max-epochs 10" in json.loads((out / "retrain.json").read_text())["schedule"]
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,") and len(csv_lines) == len(history) + 1
    html = (out / "learning_curve.html").read_text()
    assert "<script src=" not in html and "Plotly.newPlot" in html  # plotly.js inlined: works offline
    best = load_checkpoint(out / "best.pt")
    assert best["test_acc"] == max(accs) and best["epoch"] == accs.index(max(accs)) + 1
    assert load_checkpoint(out / "final.pt")["epoch"] == len(history)
    # Resuming a finished run (e.g. killed between its last checkpoint and the end) trains nothing more.
    again = retrain_best(study.study_name, _options(url, tiny_cifar, out, target=0.2, max_epochs=10, resume=True))
    assert (again.epochs_run, again.epochs_to_target, again.final_test_acc) == (
        result.epochs_run, result.epochs_to_target, result.final_test_acc)


def test_retrain_killed_mid_run_resumes_to_the_same_result_as_an_uninterrupted_one(sqlite_study, tiny_cifar,
                                                                                   tmp_path):
    study, url = sqlite_study
    straight = retrain_best(study.study_name, _options(url, tiny_cifar, tmp_path / "a", target=1.0, max_epochs=6))
    args = ["retrain", study.study_name, "--storage", url, "--target", "1.0", "--max-epochs", "6",
            "--out", str(tmp_path / "b"), "--data-dir", str(tiny_cifar), "--device", "cpu"]
    proc = hpo_popen(*args)  # a process of its own: killed below
    for line in proc.stdout:
        if line.startswith("epoch 1/6"):
            proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: like a lost machine
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] < 6  # it really was cut short
    records = retrain_records(optuna.load_study(study_name=study.study_name, storage=url))
    assert [r["status"] for r in records] == ["missed", "running"]  # the straight run's record, then the killed one
    with pytest.raises(RetrainError, match="--resume"):  # a fresh run must not overwrite the checkpoint
        prepare_retrain(study.study_name, _options(url, tiny_cifar, tmp_path / "b", target=1.0, max_epochs=6))
    done = run_cli(*args, "--resume")  # the checkpoint is what carries over: this process may resume it
    assert done.returncode == 0, done.stderr
    assert "resuming its checkpoint" in done.stdout and "MISSED target 1" in done.stdout
    assert f"final {straight.final_test_acc:.4f}, best {straight.best_test_acc:.4f}" in done.stdout
    _assert_same_run(tmp_path / "a", tmp_path / "b")
    again = run_cli(*args, "--resume")  # ended
    assert again.returncode == 0 and "MISSED target 1" in again.stdout, again.stderr
    records = retrain_records(optuna.load_study(study_name=study.study_name, storage=url))
    assert [r["status"] for r in records] == ["missed", "missed"]  # still one record per run folder


def _assert_same_run(a: Path, b: Path) -> None:
    ha = json.loads((a / "metrics.json").read_text())["epochs"]
    hb = json.loads((b / "metrics.json").read_text())["epochs"]
    assert _comparable(ha) == _comparable(hb)
    for name in ("final.pt", "best.pt"):
        wa, wb = load_checkpoint(a / name), load_checkpoint(b / name)
        assert wa["epoch"] == wb["epoch"]
        assert all(torch.equal(wa["state_dict"][k], wb["state_dict"][k]) for k in wa["state_dict"])


def test_outcome_and_artifacts_are_stored_in_the_study(storage_url, study_name, trained_study, tiny_cifar, tmp_path):
    if storage_url.startswith("sqlite"):  # storage_url is tmp_path/study.db: where copy_study puts the copy
        study_name = copy_study(trained_study, tmp_path)[0].study_name
    else:
        make_study(storage_url, study_name, tmp_path, tiny_cifar)
    best = optuna.load_study(study_name=study_name, storage=storage_url).best_trial.number
    out = tmp_path / "run"
    result = retrain_best(study_name, _options(storage_url, tiny_cifar, out, target=1.0, max_epochs=2))
    assert result.status == "missed" and result.epochs_to_target is None and result.epochs_run == 2
    assert "MISSED" in describe_result(result)
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    record = study.user_attrs[result.record_key]
    assert record["status"] == "missed" and record["trial"] == best
    assert resolve_artifact_dir(record["run_dir"], storage_url) == out.resolve()
    assert resolve_artifact_dir(record["artifact_dir"], storage_url) == (tmp_path / "artifacts").resolve()
    if storage_url.startswith("sqlite"):  # a database copied with its folder keeps working elsewhere
        assert not Path(record["artifact_dir"]).is_absolute() and not Path(record["run_dir"]).is_absolute()
    assert record["curve"]["test_acc"] == [h["test_acc"] for h in json.loads((out / "metrics.json").read_text())["epochs"]]
    assert record["epochs_to_target"] is None and record["epochs_run"] == 2
    assert record["best_test_acc"] == result.best_test_acc and record["final_test_acc"] == result.final_test_acc
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    metas = {m.filename: m for m in optuna.artifacts.get_all_artifact_meta(study)}
    assert set(metas) == set(record["artifacts"]) == {
        f"retrain-trial{best}-{n}" for n in ("final.pt", "best.pt", "config.toml", "metrics.json", "metrics.csv",
                                        "learning_curve.html")}
    for filename, meta in metas.items():
        assert record["artifacts"][filename] == meta.artifact_id
        copy = tmp_path / "download" / filename
        copy.parent.mkdir(exist_ok=True)
        optuna.artifacts.download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=str(copy))
        assert copy.read_bytes() == (out / filename.removeprefix(f"retrain-trial{best}-")).read_bytes()


@pytest.mark.parametrize("extra, message", [
    (["--trial", "99"], f"has no trial 99 (trials are 0..{N_TRIALS})"),
    (["--trial", str(N_TRIALS)], f"trial {N_TRIALS} of study '{{name}}' is PRUNED, not COMPLETE"),
    ([], "no study named 'no-such-study'"),
])
def test_cli_bad_input_is_one_clear_line(sqlite_study, tiny_cifar, tmp_path, extra, message):
    study, url = sqlite_study
    name = "no-such-study" if not extra else study.study_name
    r = run_cli("retrain", name, "--storage", url, "--data-dir", str(tiny_cifar), "--out", str(tmp_path / "run"),
                *extra)
    assert message.format(name=study.study_name) in one_error_line(r)  # exit 1, one line, no traceback
    assert not (tmp_path / "run").exists()


def test_every_output_that_cannot_be_written_is_one_clear_line(sqlite_study, tiny_cifar, tmp_path):
    """-o naming a folder, a path under a file, a file where a run folder goes, a place nothing can be written
    (/proc): one "error: ..." line naming the path asked for (not a temporary file), nothing on stdout, no
    temporary file left, no retrain record on the study. Before, these were "error: unexpected ...Error"."""
    study, url = sqlite_study
    name, folder, a_file = study.study_name, tmp_path / "folder", tmp_path / "a.txt"
    folder.mkdir()
    a_file.write_text("not a folder")
    data = ["--data-dir", str(tiny_cifar)]
    cases = {
        "report to a folder": (["report", name, "--storage", url, "-o", str(folder)],
                               f"cannot write {folder}: it is a folder (name a file)"),
        "report under a file": (["report", name, "--storage", url, "-o", str(a_file / "r.html")],
                                f"cannot create folder {a_file}: a file of that name is in the way"),
        "summary to a folder": (["study", "summary", name, "--storage", url, "-o", str(folder)],
                                f"cannot write {folder}: it is a folder (name a file)"),
        "summary into /proc": (["study", "summary", name, "--storage", url, "-o", "/proc/hpo-test.json"],
                               "cannot write /proc/hpo-test.json: No such file or directory"),
        "train into a file": (["train", "--epochs", "1", "-o", str(a_file), *data],
                              f"cannot create folder {a_file}: a file of that name is in the way"),
        "retrain into a file": (["retrain", name, "--storage", url, "-o", str(a_file), *data],
                                f"--out {a_file} is a file, not a run folder: choose another --out"),
        "export to a folder": (["export", str(tmp_path / "run"), "--format", "onnx", "-o", str(folder), *data],
                               f"cannot write {folder}: it is a folder (name a file)"),
    }
    run_toml = tmp_path / "tiny-run.toml"
    run_toml.write_text(to_toml(TINY_TRAIN, TINY_DATA))
    made = run_cli("train", "--config", str(run_toml), "--epochs", "1", "-o", str(tmp_path / "run"), *data)
    assert made.returncode == 0, made.stderr  # the folder export reads
    attrs = optuna.load_study(study_name=name, storage=url).user_attrs
    for case, (args, message) in cases.items():
        r = run_cli(*args)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"error: {message}\n"), case
    assert not list(tmp_path.rglob(".*.tmp")) and sorted(p.name for p in folder.iterdir()) == []
    assert a_file.read_text() == "not a folder"
    assert optuna.load_study(study_name=name, storage=url).user_attrs == attrs  # no retrain record added


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_failed_retrain_is_recorded_as_failed_with_its_reason(sqlite_study, tiny_cifar, tmp_path, damage):
    """A damaged checkpoint stops the retrain with one line naming the file; the study says "failed", not
    "running"."""
    study, url = sqlite_study
    out = tmp_path / "run"
    retrain_best(study.study_name, _options(url, tiny_cifar, out, target=1.0, max_epochs=1))
    ck = out / "checkpoint.pt"
    ck.write_bytes(b"" if damage == "empty" else ck.read_bytes()[:1000])
    r = run_cli("retrain", study.study_name, "--storage", url, "--data-dir", str(tiny_cifar), "--max-epochs", "1",
                "--target", "1.0", "--out", str(out), "--resume")
    assert one_error_line(r).startswith(f"error: {ck} is truncated or not a checkpoint")
    records = retrain_records(optuna.load_study(study_name=study.study_name, storage=url))
    # The damaged checkpoint is refused before training; no record of this attempt may say "running".
    assert records[0]["status"] == "missed" and all(r["status"] != "running" for r in records)
    if len(records) > 1:
        assert records[-1]["status"] == "failed" and records[-1]["reason"].startswith(f"CheckpointError: {ck}")


def test_adamw_ema_retrain_resumes_and_exports_from_weights_only_files(tmp_path, study_name, tiny_cifar):
    """With test_export's runs and tests/cifarnet's resume test: every optimizer/EMA combination's files load."""
    from hpo.results.export import export_model

    url = f"sqlite:///{tmp_path / 'study.db'}"
    text = STUDY_TOML.format(name=study_name, url=url, n_trials=1, root=tmp_path)
    text = text.replace("max_params = 4000\n", "").replace("lr = 0.05\n", 'lr = 0.005\noptimizer = "adamw"\n'
                                                                       "ema_decay = 0.9\n")
    text = text.split("[space]")[0] + "[space]\nlr = { low = 0.002, high = 0.01, log = true }\n"
    (tmp_path / "s.toml").write_text(text)
    start_study(load_study_file(tmp_path / "s.toml"), WorkerOptions(data_dir=str(tiny_cifar), device="cpu", threads=1))
    out = tmp_path / "run"
    first = retrain_best(study_name, _options(url, tiny_cifar, out, target=1.0, max_epochs=2))
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["config"]["optimizer"] == "adamw" and state["ema"] is not None
    again = retrain_best(study_name, _options(url, tiny_cifar, out, target=1.0, max_epochs=2, resume=True))
    assert again.final_test_acc == first.final_test_acc and again.epochs_run == 2
    assert export_model(out, "torchscript", data_dir=str(tiny_cifar)).max_abs_diff < 1e-4


def test_every_retrain_is_kept_and_the_reference_is_the_one_that_reached_its_target(sqlite_study, tiny_cifar,
                                                                                  tmp_path):
    """Issue 13 item 2: a later 1-epoch test retrain must not replace the recorded retrain that reached its target."""
    study, url = sqlite_study
    real = retrain_best(study.study_name, _options(url, tiny_cifar, tmp_path / "real", target=0.05, max_epochs=2))
    quick = retrain_best(study.study_name, _options(url, tiny_cifar, tmp_path / "quick", target=1.0, max_epochs=1))
    assert (real.status, quick.status) == ("reached", "missed") and real.record_key != quick.record_key
    records = retrain_records(optuna.load_study(study_name=study.study_name, storage=url))
    assert [r["key"] for r in records] == [real.record_key, quick.record_key]  # both kept, oldest first
    status = run_cli("study", "status", study.study_name, "--storage", url)
    assert status.returncode == 0, status.stderr
    lines = [line for line in status.stdout.splitlines() if line.startswith("retrain ")]
    assert len(lines) == 2 and lines[0].endswith("<- reference") and "reached target 0.05 at epoch 1" in lines[0]
    assert "missed target 1" in lines[1] and "reference" not in lines[1]
    as_json = run_cli("study", "status", study.study_name, "--storage", url, "-f", "json")
    record = json.loads(as_json.stdout)
    assert record["reference_retrain"] == real.record_key and len(record["retrains"]) == 2


def test_ctrl_c_in_retrain_is_one_error_line_and_resume_continues_its_record(sqlite_study, tiny_cifar, tmp_path):
    """Issue 13 item 4: Ctrl-C in `hpo retrain` prints one `error:` line (exit 130), not a silent 130."""
    study, url = sqlite_study
    args = ["retrain", study.study_name, "--storage", url, "--target", "1.0", "--max-epochs", "40",
            "--out", str(tmp_path / "run"), "--data-dir", str(tiny_cifar), "--device", "cpu"]
    proc = hpo_popen(*args)  # a process of its own: the signal is the point
    for line in proc.stdout:
        if line.startswith("epoch 1/40"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.startswith("interrupted: ") and err.count("\n") == 1 and "--resume" in err
    [record] = retrain_records(optuna.load_study(study_name=study.study_name, storage=url))
    assert record["status"] == "interrupted"
    changed = run_cli(*args[:7], "2", *args[8:], "--resume")
    assert changed.returncode == 1 and "different config (epochs 40 -> 2)" in changed.stderr  # --max-epochs
    assert retrain_records(optuna.load_study(study_name=study.study_name, storage=url)) == [record]  # untouched
