"""`hpo dashboard`: config precedence, the artifact store over study folders, and the real server process
answering optuna-dashboard's HTTP API on a real study database, then stopping cleanly."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.artifacts.exceptions import ArtifactNotFound

from dashboard.app import CONFIG_TOML, DashboardConfig, StudyArtifactStore
from dashboard.screenshot import get_json, start_dashboard
from hpo.errors import HPOError
from hpo.storage import open_storage

HPO = str(Path(sys.executable).with_name("hpo"))


def test_config_takes_cli_then_toml_then_defaults(tmp_path):
    toml = tmp_path / "dash.toml"
    toml.write_text('[optuna_dashboard]\nport = 9123\nhost = "0.0.0.0"\n')
    cfg = DashboardConfig.build({"host": "127.0.0.2", "port": None, "quiet": None}, toml)
    assert (cfg.host, cfg.port, cfg.quiet) == ("127.0.0.2", 9123, False)
    shipped = DashboardConfig.build({}, CONFIG_TOML)
    assert (shipped.host, shipped.port, shipped.quiet, shipped.storage) == ("127.0.0.1", 8080, True, None)


def test_config_rejects_unknown_keys(tmp_path):
    toml = tmp_path / "dash.toml"
    toml.write_text("[optuna_dashboard]\nprot = 1\n")
    with pytest.raises(HPOError, match="unknown key.*prot"):
        DashboardConfig.build({}, toml)


def test_artifact_store_reads_every_study_folder(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'two.db'}")
    for name in ("a", "b"):
        study = optuna.create_study(study_name=name, storage=storage)
        study.set_user_attr("artifact_dir", str(tmp_path / name))
        (tmp_path / name).mkdir()
        (tmp_path / name / f"id-{name}").write_bytes(name.encode())
    store = StudyArtifactStore(storage, tmp_path / "uploads")
    assert [store.open_reader(f"id-{n}").read() for n in ("a", "b")] == [b"a", b"b"]
    store.write("id-new", io.BytesIO(b"new"))  # uploads from the UI land in the explicit folder
    assert (tmp_path / "uploads" / "id-new").read_bytes() == b"new"
    store.remove("id-b")
    with pytest.raises(ArtifactNotFound):
        store.open_reader("id-b")


def _port_is_free(port: int) -> bool:
    """Nothing listens there and a new server could bind it (the closed connections' TIME_WAIT is allowed for,
    as every server does with SO_REUSEADDR)."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_dashboard_serves_study_trials_notes_and_artifacts_then_stops(demo_study):
    dash = start_dashboard(["--storage", demo_study.storage])
    try:
        assert get_json(f"{dash.url}/api/meta")["artifact_is_available"] is True
        summaries = get_json(f"{dash.url}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in summaries] == [demo_study.name]
        detail = get_json(f"{dash.url}/api/studies/{summaries[0]['study_id']}")
        expected = optuna.load_study(study_name=demo_study.name, storage=demo_study.storage).trials
        assert [t["number"] for t in detail["trials"]] == [t.number for t in expected]
        assert {t["state"] for t in detail["trials"]} == {"Complete", "Pruned"}
        assert all(t["note"]["body"].startswith(f"## Trial {t['number']}:") for t in detail["trials"])
        trial = next(t for t in detail["trials"] if t["artifacts"])
        art = next(a for a in trial["artifacts"] if a["filename"] == "curve.csv")
        url = f"{dash.url}/artifacts/{trial['study_id']}/{trial['trial_id']}/{art['artifact_id']}"
        with urllib.request.urlopen(url) as r:
            assert r.headers["Content-Type"] == "text/csv"
            assert r.read() == (demo_study.artifact_dir / art["artifact_id"]).read_bytes()
        # Study-level artifacts: what `hpo retrain` uploaded (weights, metrics, its curve).
        retrain = {a["filename"]: a["artifact_id"] for a in detail["artifacts"]}
        weights = next(name for name in retrain if name.endswith("-final.pt"))
        with urllib.request.urlopen(f"{dash.url}/artifacts/{trial['study_id']}/{retrain[weights]}") as r:
            assert r.read() == (demo_study.artifact_dir / retrain[weights]).read_bytes()
    finally:
        rc = dash.stop(signal.SIGTERM)
    assert rc == 0
    assert _port_is_free(int(dash.url.rsplit(":", 1)[1]))


def test_dashboard_from_study_file_uses_its_storage(demo_study):
    dash = start_dashboard([str(demo_study.study_file)])
    try:
        names = [s["study_name"] for s in get_json(f"{dash.url}/api/studies")["study_summaries"]]
    finally:
        assert dash.stop(signal.SIGINT) == 0
    assert names == [demo_study.name]


def test_dashboard_refuses_a_missing_database(tmp_path):
    proc = subprocess.run([HPO, "dashboard", "--storage", f"sqlite:///{tmp_path / 'typo.db'}", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no study database at") and "Traceback" not in proc.stderr
    assert not (tmp_path / "typo.db").exists()
