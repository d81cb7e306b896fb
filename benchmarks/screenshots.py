"""Screenshots of a study's optuna-dashboard page and of its `hpo report`, taken with headless Chromium.

    python benchmarks/screenshots.py studies/quick.toml --out-dir results/
    python benchmarks/screenshots.py NAME --storage URL --out-dir results/

Starts the real `hpo dashboard` on a free port, opens the study page, waits until its charts have drawn,
saves `dashboard-<name>.png`; writes the report to a temporary file and saves `report-<name>.png`. The browser
tests (tests/dashboard/test_browser.py, test_app.py) use the same helpers. Needs selenium (the test extra) and
Debian's chromium and chromium-driver (.ci/browser-deps installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# No sandbox (root in a container), no GPU, and nothing that phones home: this machine has no internet.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")
# Plotly (used by both the dashboard and the report) marks each chart's div .js-plotly-plot and draws it into
# svg.main-svg; a chart counts as drawn once that svg exists.
COUNT_CHARTS_JS = ("return [...document.querySelectorAll('.js-plotly-plot')]"
                   ".filter(e => e.querySelector('svg.main-svg')).length")
HPO = Path(sys.executable).with_name("hpo")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: dashboard and hpo from this checkout


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator["WebDriver"]:  # noqa: F821
    """A headless Chromium driven by selenium, with a fresh profile that is deleted afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists():
            raise RuntimeError(f"{binary} missing: install Debian's chromium and chromium-driver (.ci/browser-deps)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class DashboardProcess:
    proc: subprocess.Popen
    url: str  # http://host:port

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_dashboard(args: list[str], timeout: float = 60) -> DashboardProcess:
    """Run `hpo dashboard ARGS --port 0` and wait for the URL it prints (the port the OS picked)."""
    errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: nobody reads it while the server runs
    proc = subprocess.Popen([str(HPO), "dashboard", *args, "--port", "0"], stdout=subprocess.PIPE, stderr=errors,
                            text=True)
    line = proc.stdout.readline()  # the announcement, or "" when it exited
    found = re.search(r"http://[\w.\-]+:\d+", line)
    if not found:
        proc.kill()
        proc.wait()
        errors.seek(0)
        raise RuntimeError(f"hpo dashboard did not start: {line}{errors.read()}")
    url = found.group(0)
    deadline = time.monotonic() + timeout
    while True:  # the socket listens before the announcement; this just proves the app answers
        try:
            urllib.request.urlopen(f"{url}/api/meta", timeout=5).read()
            return DashboardProcess(proc, url)
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.2)


@contextmanager
def running_dashboard(args: list[str]) -> Iterator[DashboardProcess]:
    dash = start_dashboard(args)
    try:
        yield dash
    finally:
        dash.stop()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def study_id(base_url: str, name: str) -> int:
    studies = get_json(f"{base_url}/api/studies")["study_summaries"]
    ids = [s["study_id"] for s in studies if s["study_name"] == name]
    if not ids:
        raise RuntimeError(f"dashboard at {base_url} has no study {name!r}")
    return ids[0]


def wait_for_charts(driver, text: str, min_charts: int, timeout: float = 60) -> int:
    """Wait until `text` is on the page and at least `min_charts` plotly charts have drawn; their count."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d) -> int | bool:
        n = d.execute_script(COUNT_CHARTS_JS)
        return n if n >= min_charts and text in d.find_element(By.TAG_NAME, "body").text else False

    count = WebDriverWait(driver, timeout, poll_frequency=0.5).until(ready)
    time.sleep(1.0)  # plotly animates the first draw; let it settle before a screenshot
    return count


def screenshot_dashboard(driver, base_url: str, name: str, png: Path, min_charts: int = 2) -> int:
    """Open the study's dashboard page, wait for its charts, save a screenshot; the number of charts."""
    driver.get(f"{base_url}/dashboard/studies/{study_id(base_url, name)}")
    count = wait_for_charts(driver, name, min_charts)
    driver.save_screenshot(str(png))
    return count


def screenshot_report(driver, report_html: Path, png: Path, min_charts: int = 3) -> int:
    """Open a report file, wait for its charts, save a full-page screenshot; the number of charts."""
    driver.get(Path(report_html).resolve().as_uri())
    count = wait_for_charts(driver, "Study ", min_charts)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    # The window is taller than its viewport by the (headless) browser frame; 200 px covers it.
    driver.set_window_size(driver.get_window_size()["width"], min(int(height) + 200, 12000))
    time.sleep(0.5)
    driver.save_screenshot(str(png))
    return count


def take_screenshots(study: str, storage: str | None, out_dir: Path) -> tuple[Path, Path]:
    """Both screenshots for one study (a study TOML or a name in --storage); the two PNG paths."""
    from dashboard.report import report_study
    from hpo.definition.paths import locate_study

    name, url = locate_study(study, storage)
    out_dir.mkdir(parents=True, exist_ok=True)
    dash_png, report_png = out_dir / f"dashboard-{name}.png", out_dir / f"report-{name}.png"
    args = [study] if study.endswith(".toml") else []
    args += ["--storage", storage] if storage else ([] if args else ["--storage", url])
    with tempfile.TemporaryDirectory() as tmp, chromium(1600, 1100) as driver:
        report = report_study(study, storage, Path(tmp) / "report.html")
        with running_dashboard(args) as dash:
            screenshot_dashboard(driver, dash.url, name, dash_png)
        driver.set_window_size(1200, 1000)
        screenshot_report(driver, report, report_png)
    return dash_png, report_png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="study TOML, or a study name in --storage")
    parser.add_argument("--storage", help="storage URL (overrides the study file's)")
    parser.add_argument("--out-dir", type=Path, default=Path("results"), help="where the PNGs go")
    args = parser.parse_args(argv)
    for path in take_screenshots(args.study, args.storage, args.out_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
