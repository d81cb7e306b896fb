"""Saving a benchmark's plotly chart: a self-contained HTML page (plotly.js embedded, opens offline) and a PNG
drawn by headless Chromium, for README links and the results folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def save_chart(fig, stem: Path, png: bool = True, size: tuple[int, int] = (1040, 640)) -> None:
    """`stem`.html always; `stem`.png too when Chromium is installed (.ci/browser-deps installs it)."""
    html = stem.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=True)
    if not png:
        return
    browser = next((b for b in BROWSERS if Path(b).exists()), None)
    if browser is None:
        print(f"no chromium: {stem.with_suffix('.png').name} not drawn (.ci/browser-deps installs it)", file=sys.stderr)
        return
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--screenshot={stem.with_suffix('.png')}", f"--window-size={size[0]},{size[1]}",
                    "--hide-scrollbars", "--virtual-time-budget=5000", html.resolve().as_uri()],
                   check=False, capture_output=True, timeout=120)
