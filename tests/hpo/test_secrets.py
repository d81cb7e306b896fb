"""No secrets at rest or in output: a study run with a password in its PostgreSQL URL leaves the password in no
database row, results file or artifact, and no printed line shows it, however malformed the URL."""

from __future__ import annotations

import optuna

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from cifarnet.redact import hide_password, hide_passwords
from hpo.results.retrain_records import retrain_records
from hpo.storage import display_url
from hpo.definition.study_file import load_study_file
from hpo.running.worker import WorkerOptions, start_study
from tests.conftest import POSTGRES_URL
from tests.helpers import run_cli
from tests.hpo.test_retrain import STUDY_TOML

SECRET = "s3cret"  # a substring of every password below; it must appear nowhere
PASSWORD = f"Zq7-{SECRET}@x"  # with an '@', which SQLAlchemy's own parser splits at


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://u:s3cret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("postgresql+psycopg://u:ab@s3cret@h/db", "postgresql+psycopg://u:***@h/db"),  # unescaped '@'
    ("postgresql//u:s3cret@h/db", "postgresql//u:***@h/db"),  # bad scheme: make_url refuses it
    ("postgres ql://u:s3cret@h/db", "postgres ql://u:***@h/db"),
    ("postgresql://u:s3cret@h:notaport/db", "postgresql://u:***@h:notaport/db"),
    ("postgresql://h/db?sslmode=require&password=s3cret", "postgresql://h/db?sslmode=require&password=***"),
    ("sqlite:////tmp/a@b/x.db", "sqlite:////tmp/a@b/x.db"),  # an '@' in a path is not a password
])
def test_display_url_masks_the_password_however_malformed(url, shown):
    assert display_url(url) == shown and SECRET not in display_url(url)


def test_stored_url_drops_the_password_and_command_lines_are_masked():
    assert hide_password("postgresql+psycopg://u:ab@s3cret@h/db", None) == "postgresql+psycopg://u@h/db"
    stored = hide_password("postgresql://h/db?password=s3cret&sslmode=require", None)
    assert stored == "postgresql://h/db?sslmode=require"
    line = "hpo retrain x --storage postgresql://u:s3cret@h/db --storage=postgresql://u:a@s3cret@h/db --out r"
    assert hide_passwords(line) == ("hpo retrain x --storage postgresql://u:***@h/db "
                                    "--storage=postgresql://u:***@h/db --out r")


@pytest.mark.parametrize("url", ["postgresql//postgres:s3cret@127.0.0.1/db",
                                 "postgresql+psycopg://postgres:ab@s3cret@127.0.0.1:1/db",
                                 "postgresql+psycopg://postgres:s3cret@127.0.0.1:notaport/db",
                                 "nosuchdriver://postgres:s3cret@127.0.0.1/db"])
def test_cli_error_lines_never_show_the_password(url):
    r = run_cli("study", "list", "--storage", url)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert SECRET not in r.stderr + r.stdout and "***" in r.stderr


@pytest.fixture
def password_url(study_name):
    """The test PostgreSQL with a password in the URL (its trust auth ignores it); the study is deleted after."""
    url = make_url(POSTGRES_URL).set(password=PASSWORD).render_as_string(hide_password=False)
    assert SECRET in url
    yield url
    if study_name in {s.study_name for s in optuna.get_all_study_summaries(POSTGRES_URL)}:
        optuna.delete_study(study_name=study_name, storage=POSTGRES_URL)


def test_password_url_leaves_no_trace_in_database_files_or_output(password_url, study_name, tiny_cifar, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    study_file = tmp_path / "secret.toml"  # the user's own file is the one place the password may be
    study_file.write_text(STUDY_TOML.format(name=study_name, url=password_url, n_trials=3, root=work))
    start_study(load_study_file(study_file), WorkerOptions(data_dir=str(tiny_cifar), device="cpu", threads=1))
    outputs = [run_cli(*args, cwd=work) for args in (  # all they print: warnings and log records too
        ["retrain", study_name, "--storage", password_url, "--data-dir", str(tiny_cifar), "--max-epochs", "1",
         "--target", "1.0", "--out", str(work / "run"), "--device", "cpu"],
        ["study", "status", study_name, "--storage", password_url],
        ["report", study_name, "--storage", password_url, "--out", str(work / "report.html")],
    )]
    for r in outputs:
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout + r.stderr
    assert "***" in outputs[1].stdout  # status names the storage, masked

    study = optuna.load_study(study_name=study_name, storage=POSTGRES_URL)
    assert study.user_attrs["study_file"]["study"]["storage"] == hide_password(password_url, None)
    assert [r["status"] for r in retrain_records(study)] == ["missed"]
    files = [p for p in work.rglob("*") if p.is_file()]
    assert {"metrics.json", "report.html", "final.pt"} <= {p.name for p in files}
    assert "--storage postgresql+psycopg://postgres:***@" in (work / "run" / "metrics.json").read_text()
    leaking = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaking == []

    engine = sqlalchemy.create_engine(POSTGRES_URL)
    with engine.connect() as conn:  # every row of every table optuna has, as text
        tables = sqlalchemy.inspect(conn).get_table_names()
        rows = {t: conn.execute(sqlalchemy.text(f'SELECT CAST(t AS text) FROM "{t}" AS t')).scalars().all()
                for t in tables}
    engine.dispose()
    assert "study_user_attributes" in tables and len(rows["trials"]) >= 3
    assert [(t, row) for t, table_rows in rows.items() for row in table_rows if SECRET in row] == []
