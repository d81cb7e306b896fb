"""A trial's learning curve as a small standalone SVG: optuna-dashboard previews image artifacts inline,
and an SVG needs neither a browser (as plotly's PNG export does) nor an extra plotting dependency."""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, HEIGHT = 520, 300
LEFT, RIGHT, TOP, BOTTOM = 48, 120, 32, 36  # margins in px; the legend lives in the right one
# metric key -> (colour, dash pattern); accuracies only, so every line shares the 0..1 axis
SERIES = {"train_acc": ("#ff7f0e", "6 4"), "val_acc": ("#1f77b4", ""), "test_acc": ("#2ca02c", "2 3")}


def curve_svg(curve: list[dict[str, Any]], title: str) -> str:
    """Accuracy per epoch (train, val and, when reported, test) on a 0..1 axis."""
    if not curve:
        raise ValueError("curve_svg needs at least one epoch of metrics")
    epochs = [int(m["epoch"]) for m in curve]
    x_max = max(max(epochs), 2)  # one epoch still gets a visible x axis
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(epoch: float, acc: float) -> str:
        x = LEFT + (epoch - 1) / (x_max - 1) * plot_w
        y = TOP + (1 - min(max(acc, 0.0), 1.0)) * plot_h
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>']
    parts += _grid(x_max, plot_w, plot_h)
    legend_y = TOP + 8
    for key, (colour, dash) in SERIES.items():
        points = [xy(m["epoch"], m[key]) for m in curve if m.get(key) is not None]
        if not points:
            continue
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}" '
                     f'points="{" ".join(points)}"/>')
        parts += [f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2.5" fill="{colour}"/>' for p in points]
        lx = WIDTH - RIGHT + 12
        parts.append(f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 22}" y2="{legend_y}" stroke="{colour}" '
                     f'stroke-width="2" stroke-dasharray="{dash}"/>')
        parts.append(f'<text x="{lx + 28}" y="{legend_y + 4}">{key} {curve[-1].get(key, float("nan")):.3f}</text>')
        legend_y += 18
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _grid(x_max: int, plot_w: int, plot_h: int) -> list[str]:
    out = [f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for i in range(6):  # accuracy 0.0, 0.2, ... 1.0
        y = TOP + (1 - i / 5) * plot_h
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{i / 5:.1f}</text>')
    step = max(1, round(x_max / 8))
    for epoch in range(1, x_max + 1, step):
        x = LEFT + (epoch - 1) / (x_max - 1) * plot_w
        out.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 14}" text-anchor="middle">{epoch}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">epoch</text>')
    out.append(f'<text x="12" y="{TOP + plot_h / 2}" transform="rotate(-90 12 {TOP + plot_h / 2})" '
               f'text-anchor="middle">accuracy</text>')
    return out
