"""A non-loopback --host is announced: `hpo storage-proxy` (and `hpo dashboard`, tests/dashboard/test_app.py)
print one warning saying what the unauthenticated service exposes; loopback stays silent."""

from __future__ import annotations

import signal
import socket

import pytest

from hpo.exposure import exposure_warning, is_loopback
from tests.helpers import hpo_popen, run_cli


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("LOCALHOST", True), ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("example.org", False),
    ("localhost.example.org", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
    assert (exposure_warning("x", host, 1, "y") is None) is loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_storage_proxy_warns_only_beyond_loopback(tmp_path, host):
    proxy = hpo_popen("storage-proxy", "--storage", f"sqlite:///{tmp_path / 'p.db'}", "--host", host,
                      "--port", str(_free_port()), cwd=tmp_path)  # a server stopped by Ctrl-C: a process of its own
    try:
        assert proxy.stdout.readline().startswith("serving ")
    finally:
        proxy.send_signal(signal.SIGINT)
        _, err = proxy.communicate(timeout=30)
    assert proxy.returncode == 0
    if host == "127.0.0.1":
        assert err == ""
    else:
        assert err.count("\n") == 1 and err.startswith("warning: the storage proxy listens on every interface")
        assert "without authentication" in err and "delete every study" in err


def test_storage_proxy_help_says_what_a_non_local_host_exposes(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    r = run_cli("storage-proxy", "--help")
    assert r.returncode == 0 and "no authentication" in r.stdout
