"""`hpo dashboard`: config precedence, the artifact store over study folders, and the real server process
answering optuna-dashboard's HTTP API on a real study database, then stopping cleanly."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.artifacts.exceptions import ArtifactNotFound

from benchmarks.screenshots import get_json, start_dashboard
from dashboard.app import CONFIG_TOML, DashboardConfig, StudyArtifactStore
from hpo.errors import HPOError
from hpo.storage import open_storage
from tests.helpers import HPO, run_cli


def test_config_takes_cli_then_toml_then_defaults(tmp_path):
    toml = tmp_path / "dash.toml"
    toml.write_text('[optuna_dashboard]\nport = 9123\nhost = "0.0.0.0"\n')
    cfg = DashboardConfig.build({"host": "127.0.0.2", "port": None, "quiet": None}, toml)
    assert (cfg.host, cfg.port, cfg.quiet) == ("127.0.0.2", 9123, False)
    shipped = DashboardConfig.build({}, CONFIG_TOML)
    assert (shipped.host, shipped.port, shipped.quiet, shipped.storage) == ("127.0.0.1", 8080, True, None)


def test_config_allowed_hosts_from_cli_or_toml(tmp_path):
    toml = tmp_path / "dash.toml"
    toml.write_text('[optuna_dashboard]\nallowed_hosts = ["dash.example.org"]\n')
    assert DashboardConfig.build({}, toml).allowed_hosts == ("dash.example.org",)
    assert DashboardConfig.build({"allowed_hosts": ["a.example"]}, toml).allowed_hosts == ("a.example",)
    assert DashboardConfig.build({}, CONFIG_TOML).allowed_hosts == ()
    toml.write_text('[optuna_dashboard]\nallowed_hosts = "dash.example.org"\n')
    with pytest.raises(HPOError, match="allowed_hosts must be a list of host names"):
        DashboardConfig.build({}, toml)


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
    proc = run_cli("dashboard", "--storage", f"sqlite:///{tmp_path / 'typo.db'}", "--port", "0")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no study database at") and "Traceback" not in proc.stderr
    assert not (tmp_path / "typo.db").exists()


def _raw_get(port: int, host_header: str | None) -> str:
    """The status line of a hand-written HTTP/1.1 request (urllib would always send the URL's own Host)."""
    head = "GET /api/meta HTTP/1.1\r\n" + (f"Host: {host_header}\r\n" if host_header is not None else "")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall((head + "Connection: close\r\n\r\n").encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply.split(b"\r\n", 1)[0].decode()


def _serve_empty_study(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, int, Path]:
    """`hpo dashboard ARGS --port 0` on a database with one empty study; returns the process, port, stderr file."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    optuna.create_study(study_name="s", storage=url)
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err:
        proc = subprocess.Popen([HPO, "dashboard", "--storage", url, "--port", "0", *args], stdout=subprocess.PIPE,
                                stderr=err, text=True)
    line = proc.stdout.readline()  # the announcement: http://HOST:PORT/dashboard
    assert line.startswith("optuna-dashboard on http://"), errors.read_text()
    return proc, int(line.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]), errors


def test_dashboard_on_every_interface_warns_and_answers_only_allowed_hosts(tmp_path):
    proc, port, errors = _serve_empty_study(tmp_path, "--host", "0.0.0.0", "--allowed-host", "dash.example.org")
    try:
        status = {h: _raw_get(port, h) for h in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}",
                                                 "dash.example.org", f"evil.example:{port}", "127.0.0.1.evil.example",
                                                 None)}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert {h: s.split(" ", 1)[1] for h, s in status.items()} == {
        f"localhost:{port}": "200 OK", f"127.0.0.1:{port}": "200 OK", f"[::1]:{port}": "200 OK",
        "dash.example.org": "200 OK", f"evil.example:{port}": "403 Forbidden",
        "127.0.0.1.evil.example": "403 Forbidden", None: "403 Forbidden"}
    warning = errors.read_text().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: the dashboard listens on every interface")
    assert "without authentication" in warning[0] and "SSH tunnel" in warning[0]


def test_dashboard_on_loopback_does_not_warn_and_refuses_foreign_hosts(tmp_path):
    proc, port, errors = _serve_empty_study(tmp_path)
    try:
        own, foreign = _raw_get(port, f"127.0.0.1:{port}"), _raw_get(port, "attacker.example")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert own.endswith("200 OK") and foreign.endswith("403 Forbidden")
    assert errors.read_text() == ""


def test_dashboard_help_says_what_a_non_local_host_exposes(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    r = run_cli("dashboard", "--help")
    assert r.returncode == 0 and "no authentication" in r.stdout and "--allowed-host" in r.stdout
