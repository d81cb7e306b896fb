"""Headless Chromium opens the real dashboard and the report: the study is named, the charts draw, the
trial notes, curves and per-epoch tables show, and the screenshots are not blank."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest
from PIL import Image

from benchmarks.screenshots import chromium, running_dashboard, screenshot_dashboard, screenshot_report, study_id
from dashboard.report import write_report
from tests.conftest import REPO

MIN_COLOURS = 200  # a blank or error page has a handful; charts, text antialiasing and markers have thousands


def _colours(png) -> int:
    return len(Image.open(png).convert("RGB").getcolors(maxcolors=1 << 24))


@pytest.fixture(scope="module")
def browser():
    with chromium(1400, 1000) as driver:
        yield driver


@pytest.fixture(scope="module")
def dashboard_url(demo_study):
    with running_dashboard(["--storage", demo_study.storage]) as dash:
        yield dash.url
    assert dash.proc.returncode == 0  # stopped by SIGINT, cleanly


def test_study_page_names_the_study_and_draws_charts(browser, dashboard_url, demo_study, tmp_path):
    png = tmp_path / "dashboard.png"
    charts = screenshot_dashboard(browser, dashboard_url, demo_study.name, png, min_charts=2)
    assert charts >= 2
    assert f"{demo_study.name} (id=" in browser.find_element("tag name", "header").text
    assert _colours(png) > MIN_COLOURS


def test_trial_page_shows_the_note_the_curve_and_its_table(browser, dashboard_url, demo_study):
    """The curve is optuna-dashboard's own (intermediate values here, charted on the study page); the
    per-epoch table is listed among the trial's artifacts."""
    browser.get(f"{dashboard_url}/dashboard/studies/{study_id(dashboard_url, demo_study.name)}/trials")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = browser.find_element("tag name", "body").text
        if all(s in text for s in ("Trial 0: complete (seed baseline", "Intermediate Values", "Artifacts\ncurve.csv")):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the trial page never showed trial 0's note, its intermediate values and its curve.csv")


def test_report_page_draws_every_chart(browser, demo_study, tmp_path):
    study = optuna.load_study(study_name=demo_study.name, storage=demo_study.storage)
    report = write_report(study, tmp_path / "report.html")
    png = tmp_path / "report.png"
    browser.set_window_size(1200, 1000)
    charts = screenshot_report(browser, report, png, min_charts=7)
    assert charts == 7  # history, curves, importances, parallel coordinates, size vs accuracy, pruning, retrain
    assert browser.title == f"Study {demo_study.name}"
    traces = browser.execute_script("return document.querySelectorAll('#fig-curves .scatterlayer .trace').length")
    assert traces >= len(study.trials) - sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    assert _colours(png) > MIN_COLOURS


def test_screenshot_script_writes_both_pngs(demo_study, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "screenshots.py"), str(demo_study.study_file),
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    pngs = [tmp_path / f"{kind}-{demo_study.name}.png" for kind in ("dashboard", "report")]
    assert proc.stdout.split() == [word for p in pngs for word in ("wrote", str(p))]
    assert all(_colours(p) > MIN_COLOURS for p in pngs)
