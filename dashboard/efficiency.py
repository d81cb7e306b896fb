"""The report's compute sections: what pruning saved in this study, and, when the storage holds the other
studies of the same search benchmark (benchmarks/search.py: <benchmark>-<strategy>-s<seed>), how each strategy's
best-so-far grew with the compute spent."""

from __future__ import annotations

import statistics
from collections import defaultdict

import optuna
import plotly.graph_objects as go
from plotly.colors import qualitative

from hpo.efficiency import BENCHMARK_NAME, anytime, compute_to_reach, pruning_savings


def pruning_section(study: optuna.Study, trials: list) -> tuple[str, str, go.Figure | None, str]:
    """(key, title, figure, note): epochs trained and saved per trial."""
    epochs = int(study.user_attrs.get("study_file", {}).get("budget", {}).get("epochs", 0)) or max(
        (len(t.user_attrs.get("curve", [])) for t in trials), default=0)
    s = pruning_savings(trials, epochs)
    title = "Compute saved by pruning"
    if not s["epochs_unpruned"]:
        return "pruning", title, None, "No trial has trained an epoch yet."
    shown = [t for t in sorted(trials, key=lambda t: t.number) if t.user_attrs.get("curve")]
    ran = [len(t.user_attrs["curve"]) for t in shown]
    saved = [epochs - r if t.state.name == "PRUNED" else 0 for t, r in zip(shown, ran)]
    fig = go.Figure([go.Bar(x=[t.number for t in shown], y=ran, name="epochs trained", marker_color="steelblue"),
                     go.Bar(x=[t.number for t in shown], y=saved, name="epochs saved (pruned)",
                            marker_color="lightgray")])
    fig.update_layout(barmode="stack", xaxis_title="trial", yaxis_title="epochs")
    note = (f"{s['pruned_trials']} pruned trial(s): {s['epochs_trained']} of {s['epochs_unpruned']} epochs trained, "
            f"{s['epochs_saved']} saved ({s['fraction_saved']:.0%}) against running every trial to {epochs} epochs.")
    return "pruning", title, fig, note


def strategy_section(study: optuna.Study, storage) -> tuple[str, str, go.Figure | None, str] | None:
    """Anytime curves of every study of the same benchmark in `storage` (the study's own storage, URL or
    object); None when the study is not one of a benchmark."""
    match = BENCHMARK_NAME.match(study.study_name)
    if match is None:
        return None
    names = [n for n in optuna.get_all_study_names(storage)
             if (m := BENCHMARK_NAME.match(n)) and m["benchmark"] == match["benchmark"]]
    runs: dict[str, dict[int, list[dict]]] = defaultdict(dict)
    for name in names:
        m = BENCHMARK_NAME.match(name)
        other = optuna.load_study(study_name=name, storage=storage)
        runs[m["strategy"]][int(m["seed"])] = anytime(other.get_trials(deepcopy=False))
    title = "Search strategies compared (same benchmark, same budget)"
    if len(runs) < 2:
        return "strategies", title, None, f"Only one strategy of benchmark {match['benchmark']!r} in this storage."
    fig, lines = go.Figure(), []
    for i, (strategy, seeds) in enumerate(sorted(runs.items())):
        colour = qualitative.Plotly[i % len(qualitative.Plotly)]
        for n, (seed, rows) in enumerate(sorted(seeds.items())):
            rows = [r for r in rows if r["best_so_far"] is not None]
            fig.add_trace(go.Scatter(x=[r["cum_epochs"] for r in rows], y=[r["best_so_far"] for r in rows],
                                     mode="lines", line=dict(shape="hv", color=colour), name=strategy,
                                     legendgroup=strategy, showlegend=n == 0,
                                     hovertext=f"{strategy} seed {seed}", hoverinfo="text+x+y"))
        bests = [rows[-1]["best_so_far"] for rows in seeds.values() if rows and rows[-1]["best_so_far"] is not None]
        ratios = []
        for seed, rows in seeds.items():
            ref = runs.get("random", {}).get(seed)
            if ref and ref[-1]["best_so_far"] is not None:
                need, ref_need = compute_to_reach(rows, ref[-1]["best_so_far"]), compute_to_reach(
                    ref, ref[-1]["best_so_far"])
                ratios.append(need / ref_need if need is not None else float("inf"))
        ratio = ""
        if ratios:
            reached = sum(r != float("inf") for r in ratios)
            median = statistics.median(ratios)
            ratio = (f", epochs to reach random's best: x{median:.2f} of random's (median)" if median != float("inf")
                     else ", random's best not reached by the median seed")
            ratio += f", reached in {reached} of {len(ratios)} seed(s)"
        if bests:
            lines.append(f"{strategy}: median best {statistics.median(bests):.4f} over {len(bests)} seed(s){ratio}")
    fig.update_layout(xaxis_title="epochs trained (whole study)", yaxis_title="best val_acc so far")
    return "strategies", title, fig, "; ".join(lines) + "."

