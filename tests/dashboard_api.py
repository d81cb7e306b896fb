"""Read a study the way optuna-dashboard serves it (its public WSGI app, in-process): each trial's note and
artifacts are what users see, with no private optuna-dashboard module involved."""

from __future__ import annotations

import json
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna_dashboard


def dashboard_trials(storage, study_name: str) -> list[dict[str, Any]]:
    """The study's trials from /api/studies/<id>: number, state, note {body}, artifacts [{filename, ...}]."""
    app = optuna_dashboard.wsgi(storage)
    study_id = next(s["study_id"] for s in _get(app, "/api/studies")["study_summaries"]
                    if s["study_name"] == study_name)
    return _get(app, f"/api/studies/{study_id}")["trials"]


def _get(app, path: str) -> dict[str, Any]:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:200])
    return json.loads(body)
