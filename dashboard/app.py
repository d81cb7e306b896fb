"""`hpo dashboard`: the real optuna-dashboard app, served on the study's own storage and artifact store.

Shaped like optuna-dashboard itself: a `DashboardConfig` filled from the command line, then
`dashboard/config.toml` (optuna-dashboard's --from-config layout), then defaults; `create_app(storage,
artifact_store)` takes storage objects, so tests hand it a real one; `serve()` only opens, serves and stops.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, BinaryIO, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import BaseStorage

from cifarnet.config import read_toml_bounded
from hpo.definition.paths import resolve_artifact_dir
from hpo.storage import open_existing_storage
from hpo.definition.study_file import DEFAULT_STORAGE, load_study_file
from hpo.errors import HPOError
from hpo.exposure import LOOPBACK_NAMES, exposure_warning

CONFIG_TOML = Path(__file__).with_name("config.toml")


@dataclass(frozen=True)
class DashboardConfig:
    # SQLAlchemy URL of the studies to show: the study file's [study] storage, or --storage.
    storage: str | None = None
    # Artifact folder read first and written by uploads from the UI; every study's own "artifact_dir"
    # user_attr is read too, so one dashboard shows the artifacts of all studies in the database.
    artifact_dir: str | None = None
    # Interface to listen on; loopback by default because the dashboard has no authentication.
    host: str = "127.0.0.1"
    # TCP port; 0 picks a free one (the URL printed on start says which).
    port: int = 8080
    # No per-request access log on stderr.
    quiet: bool = False
    # Host header names answered besides localhost, 127.0.0.1 and [::1] (and --host itself): a request naming
    # any other host gets 403, so a web page cannot reach the dashboard through DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def build(cls, cli: dict[str, Any], toml_path: Path | None = CONFIG_TOML) -> "DashboardConfig":
        """Each field from `cli` (None = not given), else the TOML's [optuna_dashboard] table, else the default."""
        names = {f.name for f in fields(cls)}
        table = read_toml_bounded(toml_path, HPOError, "dashboard config") if toml_path else {}
        table = table.get("optuna_dashboard", {})
        if not isinstance(table, dict):
            raise HPOError(f"dashboard config: optuna_dashboard must be an [optuna_dashboard] table, got {table!r:.80}")
        unknown = sorted((set(cli) | set(table)) - names)
        if unknown:
            raise HPOError(f"dashboard config: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        values = {name: cli[name] if cli.get(name) is not None else table.get(name) for name in names}
        hosts = values.get("allowed_hosts")
        if hosts is not None:
            if not isinstance(hosts, (list, tuple)) or not all(isinstance(h, str) and h for h in hosts):
                raise HPOError(f"dashboard config: allowed_hosts must be a list of host names, got {hosts!r}")
            values["allowed_hosts"] = tuple(hosts)
        return cls(**{k: v for k, v in values.items() if v is not None})


class StudyArtifactStore:
    """optuna's FileSystemArtifactStore over every study's own artifact folder (study user_attr "artifact_dir").

    Artifact ids are UUIDs, so a read simply tries each folder; the folders are re-read from storage on every
    lookup, so studies created after the dashboard started are served too.
    """

    def __init__(self, storage: BaseStorage, default_dir: str | Path | None = None, storage_url: str = ""):
        self._storage = storage
        self._default = Path(default_dir) if default_dir else None
        self._url = storage_url  # stored folders are relative to a SQLite database's folder (hpo.definition.paths)

    def folders(self) -> list[Path]:
        found = [resolve_artifact_dir(s.user_attrs["artifact_dir"], self._url) for s in self._storage.get_all_studies()
                 if s.user_attrs.get("artifact_dir")]
        return list(dict.fromkeys(([self._default] if self._default else []) + found))

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return FileSystemArtifactStore(self._folder_of(artifact_id)).open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        folders = self.folders()
        if not folders:
            raise ArtifactNotFound("no artifact folder: pass --artifact-dir or set the study's artifact_dir")
        folders[0].mkdir(parents=True, exist_ok=True)
        FileSystemArtifactStore(folders[0]).write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        FileSystemArtifactStore(self._folder_of(artifact_id)).remove(artifact_id)

    def _folder_of(self, artifact_id: str) -> Path:
        # FileSystemArtifactStore keeps an artifact as the file <folder>/<artifact id>.
        found = next((f for f in self.folders() if (f / artifact_id).is_file()), None)
        if found is None:
            raise ArtifactNotFound(f"artifact {artifact_id} is in none of the study artifact folders")
        return found


def create_app(storage: BaseStorage, artifact_store: Any | None = None) -> Callable:
    """The optuna-dashboard WSGI app (API, UI and artifact routes) over `storage` and `artifact_store`, its
    artifacts served inert (InertArtifacts)."""
    return InertArtifacts(optuna_dashboard.wsgi(storage, artifact_store=artifact_store))


# optuna-dashboard serves an artifact under /artifacts/<study>[/<trial>]/<id> with the uploader's Content-Type and
# "Access-Control-Allow-Origin: *": an uploaded HTML or SVG file opened there is a page of the dashboard's own
# origin and can script against its API, and any web page may read every artifact. Types a browser shows
# passively (the UI's <img>, <audio>, <video>, fetched tables) stay inline; everything else is an attachment.
ARTIFACT_PATH = re.compile(r"/+artifacts/")
INLINE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp", "text/plain",
                "text/csv", "text/tab-separated-values", "application/json", "audio/", "video/")
ARTIFACT_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; sandbox"),  # no script, own origin
    ("X-Content-Type-Options", "nosniff"),  # the declared type, never a sniffed text/html
    ("Cross-Origin-Resource-Policy", "same-origin"),
]
_CONTROLLED = {name.lower() for name, _ in ARTIFACT_HEADERS} | {"access-control-allow-origin", "content-disposition"}


class InertArtifacts:
    """WSGI middleware: no wildcard CORS on any response; artifact responses sandboxed (a CSP without scripts,
    an opaque origin), never sniffed, and served as attachments unless their type is shown passively."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        artifact_path = bool(ARTIFACT_PATH.match(environ.get("PATH_INFO", "")))

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            artifact = artifact_path or any(k.lower() == "access-control-allow-origin" for k, _ in headers)
            kept = [(k, v) for k, v in headers if k.lower() not in (_CONTROLLED if artifact else
                                                                    {"access-control-allow-origin"})]
            if artifact:
                kept += ARTIFACT_HEADERS
                content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
                if not _shown_passively(content_type):
                    kept.append(("Content-Disposition", "attachment"))
            return start_response(status, kept, exc_info)

        return self.app(environ, start)


def _shown_passively(content_type: str) -> bool:
    """'image/png' yes; 'text/html; charset=utf-8', 'image/svg+xml', 'application/xml', '' no."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return any(mime == t or (t.endswith("/") and mime.startswith(t)) for t in INLINE_TYPES)


class HostCheck:
    """WSGI middleware: answer only requests whose Host header names an allowed host, else 403.

    optuna-dashboard answers any Host; a page on an attacker's domain that re-resolves to 127.0.0.1 (DNS
    rebinding) would then drive the dashboard with the user's browser. Names compare without port and case."""

    def __init__(self, app: Callable, allowed: set[str]):
        self.app, self.allowed = app, {_host_name(h) for h in allowed}

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if _host_name(environ.get("HTTP_HOST", "")) in self.allowed:
            return self.app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"403 Forbidden: this Host is not served (hpo dashboard --allowed-host NAME adds one)\n"]


def _host_name(host: str) -> str:
    """'[::1]:8080' -> '::1', 'LocalHost.:80' -> 'localhost'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).rstrip(".")


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow request (e.g. importances) never holds up shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(config: DashboardConfig, storage: BaseStorage, announce: Callable[[str], None] = print) -> None:
    """Serve until SIGINT or SIGTERM, then stop accepting, close the socket (the port is free) and return."""
    store = StudyArtifactStore(storage, config.artifact_dir, config.storage)
    handler = _QuietHandler if config.quiet else WSGIRequestHandler
    allowed = {*LOOPBACK_NAMES, *config.allowed_hosts, *([] if config.host in ("0.0.0.0", "::") else [config.host])}
    httpd = make_server(config.host, config.port, HostCheck(create_app(storage, store), allowed),
                        server_class=_ThreadedServer, handler_class=handler)
    warning = exposure_warning("the dashboard", config.host, httpd.server_address[1],
                               "read, change and delete its studies, notes and artifacts, and upload files")
    if warning:
        print(warning, file=sys.stderr, flush=True)

    def stop(signum: int, _frame: Any) -> None:
        # shutdown() waits for serve_forever() to return, so it must run outside the serving thread.
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        host, port = httpd.server_address[:2]
        announce(f"optuna-dashboard on http://{host}:{port}/dashboard (Ctrl-C to stop)")
        sys.stdout.flush()
        httpd.serve_forever()
    finally:
        httpd.server_close()
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_dashboard(study: str | Path | None, cli: dict[str, Any], toml_path: Path | None = CONFIG_TOML,
                  announce: Callable[[str], None] = print) -> None:
    """`hpo dashboard`: resolve the study file / --storage, merge CLI > TOML > defaults, open, serve."""
    storage, artifact_dir = cli.get("storage") or DEFAULT_STORAGE, None
    if study is not None:  # a study TOML: its storage (--storage still wins) and its artifact folder
        spec = load_study_file(study, storage=cli.get("storage"))
        storage, artifact_dir = spec.storage, spec.artifact_dir
    config = DashboardConfig.build({**cli, "storage": storage, "artifact_dir": cli.get("artifact_dir") or artifact_dir},
                                   toml_path)
    serve(config, open_existing_storage(config.storage), announce)
