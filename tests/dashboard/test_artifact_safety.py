"""Artifacts are inert: a file uploaded to the dashboard (HTML, SVG, XML) never runs as a page of the dashboard's
own origin, and no other web page may read artifacts (no wildcard CORS). Checked on the real `hpo dashboard`
on loopback, with artifacts uploaded through optuna-dashboard's own upload API."""

from __future__ import annotations

import base64
import json
import signal
import urllib.request

import optuna
import pytest

from benchmarks.screenshots import get_json, start_dashboard

UPLOADS = {  # filename: (content, served inline?)
    "evil.html": (b"<script>fetch('/api/studies').then(r => r.text()).then(alert)</script>", False),
    "evil.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>', False),
    "evil.xml": (b'<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>', False),
    "evil.xhtml": (b'<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>', False),
    "noext": (b"<script>alert(1)</script>", False),  # application/octet-stream: never sniffed into HTML
    "plot.png": (b"\x89PNG\r\n\x1a\n" + b"\0" * 32, True),  # what the UI shows in <img>: stays inline
    "curve.csv": (b"epoch,val_acc\n1,0.5\n", True),  # the UI fetches and tables it
}
SANDBOX = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


def _request(url: str, body: dict | None = None, origin: str = "http://attacker.example"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Origin": origin, "Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=30)


@pytest.fixture(scope="module")
def dashboard_with_uploads(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifact_safety")
    url = f"sqlite:///{root / 'd.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    study.ask()  # a running trial: optuna-dashboard accepts trial uploads only before it finishes
    dash = start_dashboard(["--storage", url, "--artifact-dir", str(root / "artifacts")])
    try:
        sid = get_json(f"{dash.url}/api/studies")["study_summaries"][0]["study_id"]
        tid = get_json(f"{dash.url}/api/studies/{sid}")["trials"][0]["trial_id"]
        served = {}
        for i, (name, (content, _)) in enumerate(UPLOADS.items()):
            file = "data:application/octet-stream;base64," + base64.b64encode(content).decode()
            target = f"{sid}/{tid}" if i % 2 else f"{sid}"  # study and trial artifacts alike
            with _request(f"{dash.url}/api/artifacts/{target}", {"file": file, "filename": name}) as r:
                assert r.status == 201
                served[name] = f"{dash.url}/artifacts/{target}/{json.load(r)['artifact_id']}"
        yield dash, served
    finally:
        assert dash.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("name", list(UPLOADS))
def test_uploaded_artifacts_are_served_inert_and_without_wildcard_cors(dashboard_with_uploads, name):
    _, served = dashboard_with_uploads
    content, inline = UPLOADS[name]
    with _request(served[name]) as r:
        headers, body = r.headers, r.read()
    assert body == content  # still downloadable, byte for byte
    assert headers["Content-Security-Policy"] == SANDBOX
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Access-Control-Allow-Origin"] is None
    assert headers["Content-Disposition"] == (None if inline else "attachment")
    if name == "curve.csv":
        assert headers["Content-Type"] == "text/csv"


def test_no_dashboard_response_allows_every_origin(dashboard_with_uploads):
    dash, served = dashboard_with_uploads
    for url in (f"{dash.url}/api/meta", f"{dash.url}/api/studies", f"{dash.url}/dashboard",
                served["evil.html"].rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"):
        try:
            with _request(url) as r:
                headers = r.headers
        except urllib.error.HTTPError as e:  # the unknown artifact: 404, inert too
            headers = e.headers
            assert e.code == 404 and headers["Content-Security-Policy"] == SANDBOX
        assert headers["Access-Control-Allow-Origin"] is None, url
