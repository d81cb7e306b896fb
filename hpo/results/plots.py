"""The one learning-curve chart: accuracy and loss per epoch, drawn by plotly. `hpo retrain` writes it to its
run folder and `hpo report` shows it in its retrain section (trials' curves are optuna-dashboard's own
intermediate-value chart)."""

from __future__ import annotations

from typing import Any


def learning_curve_figure(history: list[dict[str, Any]], target: float | None = None, title: str | None = None):
    """Two panels, accuracy and loss, one line per split (train, val, test) the epochs recorded."""
    from plotly.subplots import make_subplots  # plotly is only needed for the charts

    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy", "loss"))
    for col, metric in ((1, "acc"), (2, "loss")):
        for split, dash in (("train", "dot"), ("val", "dash"), ("test", "solid")):
            key = f"{split}_{metric}"
            points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
            if points:
                fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=key, mode="lines+markers",
                                line={"dash": dash}, row=1, col=col)
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", line_color="green", annotation_text=f"target {target:g}", row=1,
                      col=1)
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_layout(template="plotly_white", **({"title": {"text": title, "font": {"size": 13}}} if title else {}))
    return fig
