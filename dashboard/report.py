"""`hpo report`: one self-contained HTML page (plotly.js embedded: it must open with no internet) about a study.

Sections: optimization history, per-epoch validation curves (pruned trials marked), parameter importances,
parallel coordinates, accuracy against parameter count with its Pareto front, the epochs pruning saved, the
search strategies compared (for the studies of benchmarks/search.py, named <benchmark>-<strategy>-s<seed>,
stored side by side) and the retrain curves. The seed baseline (the original CifarNet, user_attr
"seed_baseline") is highlighted wherever it appears.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import FrozenTrial, TrialState
from plotly.colors import qualitative

from cifarnet.files import write_text_atomic
from hpo.errors import HPOError
from hpo.results.efficiency import (BENCHMARK_NAME, compare_strategies, pruning_savings, study_record,
                                    trial_budget, trial_compute)
from hpo.results.records import rerun_note, reruns
from hpo.definition.paths import locate_study
from hpo.results.retrain_records import describe_record, reference_retrain, retrain_records
from hpo.storage import open_existing_storage
from hpo.running.study import load_spec, load_study, seed_baseline

# PED-ANOVA (optuna-dashboard's own evaluator; no scikit-learn needed) contrasts the best trials with the rest;
# with fewer complete trials than this the ranking is noise, so the page says so instead of drawing it.
MIN_TRIALS_FOR_IMPORTANCE = 4
BASELINE_MARKER = dict(symbol="star", size=18, color="gold", line=dict(color="black", width=1))


@dataclass(frozen=True)
class Section:
    key: str  # HTML id of the section, stable for links and tests
    title: str
    figure: go.Figure | None  # None when there is nothing to draw yet; `note` says why
    note: str = ""
    rows: tuple[tuple[str, ...], ...] = ()  # a table drawn under the note: a header row, then data rows


def build_report(study: optuna.Study, storage: optuna.storages.BaseStorage | str | None = None,
                 ablation: dict[str, Any] | None = None) -> str:
    """The whole page as one HTML string. With the study's `storage`, a study of the search benchmark
    (benchmarks/search.py) also gets the comparison with the other strategies stored beside it; with `ablation`
    (benchmarks/ablation.py's summary), the importances are shown beside the ablation's effect sizes."""
    trials = study.get_trials(deepcopy=False)
    sections = [history_section(study, trials), curves_section(study, trials),
                importance_section(study, trials, ablation), parallel_section(study, trials), size_section(trials),
                pruning_section(study, trials), finalists_section(study), retrain_section(study)]
    compared = strategy_section(study, storage) if storage is not None else None
    if compared is not None:
        sections.insert(-1, compared)
    return render_page(study, trials, sections)


def write_report(study: optuna.Study, path: str | Path, storage: optuna.storages.BaseStorage | None = None,
                 ablation: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    write_text_atomic(build_report(study, storage, ablation), path)  # a crash mid-write never leaves half a report
    return path


def report_study(study: str | Path, storage: str | None, out: str | Path, ablation: Path | None = None) -> Path:
    """`hpo report`: `study` is a study name (in --storage, else the default database) or a study TOML;
    `ablation`: benchmarks/ablation.py's summary.json, shown beside the importances."""
    name, url = locate_study(str(study), storage)
    effects = read_ablation(ablation) if ablation is not None else None
    opened = open_existing_storage(url, read_only=True)  # read once: the study and its sibling studies
    return write_report(load_study(url, name, storage=opened), out, opened, effects)


def read_ablation(path: Path) -> dict[str, Any]:
    """benchmarks/ablation.py's summary.json, or one HPOError line."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise HPOError(f"cannot read the ablation summary {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("effects"), dict):
        raise HPOError(f"{path} is not an ablation summary (benchmarks/ablation.py writes one: no 'effects')")
    return data


def complete_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]


def _baseline_trace(x: float, y: float, text: str) -> go.Scatter:
    return go.Scatter(x=[x], y=[y], mode="markers", marker=BASELINE_MARKER, name="seed baseline (original CifarNet)",
                      hovertext=[text], hoverinfo="text+y")


def history_section(study: optuna.Study, trials: list[FrozenTrial]) -> Section:
    done = complete_trials(trials)
    if not done:
        return Section("history", "Optimization history", None, "No complete trial yet.")
    fig = optuna.visualization.plot_optimization_history(study, target_name="val_acc (best epoch)")
    base = seed_baseline(done)
    if base is not None:
        fig.add_trace(_baseline_trace(base.number, base.value, f"trial {base.number}: seed baseline"))
    fig.update_layout(title=None)
    return Section("history", "Optimization history", fig,
                   "Objective of each complete trial (best validation accuracy over its epochs) and the running best.")


def curves_section(study: optuna.Study, trials: list[FrozenTrial]) -> Section:
    """optuna's intermediate-value plot, with the baseline drawn bold and a red x where a trial was pruned."""
    if not any(t.intermediate_values for t in trials):
        return Section("curves", "Validation accuracy per epoch", None, "No trial has reported an epoch yet.")
    fig = optuna.visualization.plot_intermediate_values(study)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    for t in trials:
        steps = sorted(t.intermediate_values)
        if t.user_attrs.get("seed_baseline") and steps:
            fig.add_scatter(x=steps, y=[t.intermediate_values[s] for s in steps], mode="lines+markers",
                            name="seed baseline (original CifarNet)", line=dict(color="goldenrod", width=4))
        if t.state == TrialState.PRUNED and steps:
            fig.add_scatter(x=[steps[-1]], y=[t.intermediate_values[steps[-1]]], mode="markers", showlegend=False,
                            marker=dict(symbol="x", size=11, color="crimson"),
                            hovertext=f"trial {t.number} pruned at epoch {steps[-1]}", hoverinfo="text")
    target = study.user_attrs.get("target_accuracy")
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", line_color="green", annotation_text=f"target {target:.3f}")
    fig.update_layout(title=None, xaxis_title="epoch", yaxis_title="val_acc", xaxis_dtick=1)
    drawn = sum(bool(t.intermediate_values) for t in pruned)
    unseen = f"; {len(pruned) - drawn} were pruned before training (no curve)" if len(pruned) > drawn else ""
    return Section("curves", "Validation accuracy per epoch", fig,
                   f"One line per trial; {drawn} pruned trial(s) end in a red x where the pruner stopped them{unseen}.")


# Which searched parameter each ablation arm (benchmarks/ablation.py) changes.
ARM_PARAMETER = {"stride-conv-alone": "downsample", "maxpool": "downsample", "dilated-last-downsample": "downsample3",
                 "plain-convs": "depthwise", "no-residual-3b": "residual", "residual-all": "residual_all",
                 "gelu": "activation", "bn-before-act": "norm_order", "whiten": "whiten",
                 "norm-lr-x4": "norm_lr_scale", "alternate-flip": "alternate_flip", "ema-0.99": "ema_decay",
                 "tta-shift-1": "tta_shift"}


def importance_section(study: optuna.Study, trials: list[FrozenTrial],
                       ablation: dict[str, Any] | None = None) -> Section:
    n = len(complete_trials(trials))
    title = "Parameter importances"
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    enough = n >= MIN_TRIALS_FOR_IMPORTANCE
    rows: tuple[tuple[str, ...], ...] = ()
    if ablation:
        try:
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator) if enough else {}
        except (RuntimeError, ValueError):
            importances = {}
        rows = effect_rows(ablation, importances)
    if not enough:
        return Section("importance", title, None,
                       f"Not enough complete trials for parameter importances: {n} complete, "
                       f"at least {MIN_TRIALS_FOR_IMPORTANCE} needed for a ranking that is not noise.", rows)
    try:
        fig = optuna.visualization.plot_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as e:  # e.g. every complete trial has the same parameters
        return Section("importance", title, None, f"Parameter importances could not be computed: {e}", rows)
    fig.update_layout(title=None)
    beside = " Below, the ablation's paired effects of the same switches (benchmarks/ablation.py)." if rows else ""
    return Section("importance", title, fig, f"PED-ANOVA over {n} complete trials (the top 10% against all)."
                                             f"{beside}", rows)


def effect_rows(ablation: dict[str, Any], importances: dict[str, float]) -> tuple[tuple[str, ...], ...]:
    """One row per ablation arm: the switch it changes, its paired effect on test accuracy from each base (mean
    and 95% interval, percentage points), and that parameter's importance in this study where it was searched."""
    effects = ablation.get("effects", ablation)
    bases = list(effects)
    head = ("ablation arm", "parameter", *(f"effect from the {b} base (test, pp)" for b in bases),
            "importance here")
    arms = list(dict.fromkeys(a for b in bases for a in effects[b].get("arms", {})))

    def cell(base: str, arm: str) -> str:
        t = effects[base].get("arms", {}).get(arm, {}).get("test")
        if not t:
            return "-"
        ci = f" [{100 * t['low']:+.2f}, {100 * t['high']:+.2f}]" if t.get("low") is not None else ""
        return f"{100 * t['mean']:+.2f}{ci} (n={t['n']})"

    rows = []
    for arm in arms:
        param = ARM_PARAMETER.get(arm, "")
        searched = [k for k in importances if k == param or k.startswith(param) and param]
        importance = ", ".join(f"{k} {importances[k]:.2f}" for k in searched) or "not searched"
        rows.append((arm, param, *(cell(b, arm) for b in bases), importance))
    return (head, *rows)


def finalists_section(study: optuna.Study) -> Section:
    """The finalists (hpo.running.finalists): the top trials re-run with several seeds, and the winner."""
    record = study.user_attrs.get("finalists")
    title = "Finalists: the top trials with more seeds"
    if not isinstance(record, dict):
        return Section("finalists", title, None, "No finalists ran yet (`hpo study finalists`, or the first step "
                                                 "of `hpo retrain` when the study file has a [finalists] table).")
    head = ("trial", "search val_acc", *(f"seed {s}" for s in range(record["seeds"])), "mean val_acc", "")
    rows = [(str(r["trial"]), f"{r['search_val_acc']:.4f}",
             *("-" if v is None else f"{v:.4f}" for v in r["val_acc"]),
             "-" if r["mean_val_acc"] is None else f"{r['mean_val_acc']:.4f}",
             "winner" if r["trial"] == record["winner"] else "") for r in record["rows"]]
    note = (f"{record['epochs']} epochs x {record['train_size'] or 'all'} training images per run, scored on the "
            f"validation split. Winner: trial {record['winner']} ({record['why']}).")
    return Section("finalists", title, None, note, (head, *rows))


def parallel_section(study: optuna.Study, trials: list[FrozenTrial]) -> Section:
    if not complete_trials(trials):
        return Section("parallel", "Parallel coordinates", None, "No complete trial yet.")
    fig = optuna.visualization.plot_parallel_coordinate(study, target_name="val_acc")
    fig.update_layout(title=None)
    return Section("parallel", "Parallel coordinates", fig, "Searched parameters of each complete trial.")


def pareto_front(points: list[tuple[int, float, int]]) -> list[tuple[int, float, int]]:
    """(params, accuracy, trial number) points no other point beats with fewer-or-equal params and more accuracy."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def size_section(trials: list[FrozenTrial]) -> Section:
    title = "Accuracy against parameter count"
    points = [(t.user_attrs["params_count"], t.value, t.number) for t in complete_trials(trials)
              if "params_count" in t.user_attrs]
    if not points:
        return Section("size", title, None, "No complete trial with a recorded parameter count yet.")
    front = pareto_front(points)
    fig = go.Figure([
        go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers", name="complete trial",
                   marker=dict(size=8, color="rgba(31,119,180,0.7)"),
                   hovertext=[f"trial {p[2]}" for p in points], hoverinfo="text+x+y"),
        go.Scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines+markers", name="Pareto front",
                   line=dict(shape="hv", color="crimson"), marker=dict(size=10, color="crimson"),
                   hovertext=[f"trial {p[2]}" for p in front], hoverinfo="text+x+y"),
    ])
    base = seed_baseline(complete_trials(trials))
    if base is not None and "params_count" in base.user_attrs:
        fig.add_trace(_baseline_trace(base.user_attrs["params_count"], base.value, f"trial {base.number}"))
    fig.update_layout(xaxis_title="parameters", yaxis_title="val_acc (best epoch)", xaxis_type="log")
    return Section("size", title, fig, f"Pareto front (fewer parameters, higher accuracy): trials "
                                       f"{', '.join(str(p[2]) for p in front)}.")


def pruning_section(study: optuna.Study, trials: list[FrozenTrial]) -> Section:
    """Epochs trained and saved per trial."""
    try:  # a rung study counts image-epochs (its runs differ in size)
        epochs, rungs, images = trial_budget(load_spec(study))
    except HPOError:  # a study of plain optuna: its longest curve is the budget
        epochs, rungs, images = max((len(t.user_attrs.get("curve", [])) for t in trials), default=0), [], None
    s, title = pruning_savings(trials, epochs, rungs, images), "Compute saved by pruning"
    unit = s["unit"]
    if not s["epochs_unpruned"]:
        return Section("pruning", title, None, "No trial has trained an epoch yet.")
    costs = [(t.number, trial_compute(t, epochs, rungs, images)) for t in sorted(trials, key=lambda t: t.number)]
    shown = [(n, c) for n, c in costs if c is not None]
    fig = go.Figure([go.Bar(x=[n for n, _ in shown], y=[c[0] for _, c in shown], name=f"{unit} trained",
                            marker_color="steelblue"),
                     go.Bar(x=[n for n, _ in shown], y=[c[1] for _, c in shown], name=f"{unit} saved (pruned)",
                            marker_color="lightgray")])
    fig.update_layout(barmode="stack", xaxis_title="trial", yaxis_title=unit)
    budget_text = f"every rung and the full {epochs} epochs" if rungs else f"{epochs} epochs"
    return Section("pruning", title, fig, f"{s['pruned_trials']} pruned trial(s): {s['epochs_trained']:,} of "
                   f"{s['epochs_unpruned']:,} {unit} trained, {s['epochs_saved']:,} saved ({s['fraction_saved']:.0%}) "
                   f"against running every trial to {budget_text}.")


def strategy_section(study: optuna.Study, storage: optuna.storages.BaseStorage | str) -> Section | None:
    """Every study of the same benchmark in `storage`, compared as benchmarks/search.py does
    (hpo.results.efficiency.compare_strategies); None when the study is not one of a benchmark."""
    match = BENCHMARK_NAME.match(study.study_name)
    if match is None:
        return None
    records = {(m["strategy"], int(m["seed"])): study_record(
        optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
        for name in sorted(optuna.get_all_study_names(storage))
        if (m := BENCHMARK_NAME.match(name)) and m["benchmark"] == match["benchmark"]}
    title = "Search strategies compared (same benchmark, same budget)"
    if len({strategy for strategy, _ in records}) < 2:
        return Section("strategies", title, None,
                       f"Only one strategy of benchmark {match['benchmark']!r} in this storage.")
    lines = []
    for strategy, s in compare_strategies(records).items():
        ratio = (f"x{s['median_ratio_epochs']:.2f} of random's (median)" if s["median_ratio_epochs"] is not None
                 else "not reached by the median seed")
        best = "-" if s["median_best"] is None else f"{s['median_best']:.4f}"
        lines.append(f"{strategy}: median best {best} over {s['seeds']} seed(s), epochs to reach "
                     f"random's best: {ratio}, reached in {s['reached_random_best']} of {s['seeds']} seed(s)")
    fig = strategy_figure(records)
    fig.update_layout(xaxis_title="epochs trained (whole study)", yaxis_title="best val_acc so far")
    note = "; ".join(lines) + "." if lines else "No random-search run to compare with."
    return Section("strategies", title, fig, note)


def strategy_figure(records: dict[tuple[str, int], dict]) -> go.Figure:
    """Anytime curves: best val_acc so far against epochs trained, one line per (strategy, seed) record."""
    fig, colours = go.Figure(), {}  # strategy -> its colour, also "has its legend entry"
    for (strategy, seed), record in sorted(records.items()):
        rows = [r for r in record["trials"] if r["best_so_far"] is not None]
        first = strategy not in colours
        colour = colours.setdefault(strategy, qualitative.Plotly[len(colours) % len(qualitative.Plotly)])
        fig.add_trace(go.Scatter(
            x=[r["cum_epochs"] for r in rows], y=[r["best_so_far"] for r in rows], mode="lines",
            line=dict(shape="hv", color=colour), name=strategy, legendgroup=strategy, showlegend=first,
            hovertemplate=f"{strategy} seed {seed}<br>%{{x}} epochs<br>best val %{{y:.4f}}<extra></extra>"))
    return fig


def retrain_section(study: optuna.Study) -> Section:
    """Every retrain recorded on the study (hpo.results.retrain_records), the reference one first and drawn boldest."""
    title = "Retraining the best configuration"
    records = retrain_records(study)
    if not records:
        return Section("retrain", title, None, "No retrain recorded for this study yet (run `hpo retrain`).")
    reference = reference_retrain(records)
    fig = go.Figure()
    for r in records:
        curve = (r.get("curve") or {}).get("test_acc") or _legacy_curve(r)
        if curve:
            ref = r is reference
            fig.add_trace(go.Scatter(x=list(range(1, len(curve) + 1)), y=curve, mode="lines+markers",
                                     name=f"trial {r.get('trial')}, {r.get('max_epochs')}-epoch schedule"
                                          + (" (reference)" if ref else ""),
                                     line=dict(width=3 if ref else 1), opacity=1.0 if ref else 0.6))
    target = (reference or records[-1]).get("target")
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", line_color="green", annotation_text=f"target {target:.3f}")
    fig.update_layout(xaxis_title="epoch", yaxis_title="test accuracy", xaxis_dtick=1)
    lines = [f"{'Reference' if r is reference else 'Retrain'}: {describe_record(r)}" for r in
             ([reference] if reference else []) + [r for r in records if r is not reference]]
    return Section("retrain", title, fig if fig.data else None, " | ".join(lines))


def _legacy_curve(record: dict) -> list[float]:
    """Records written before retrains carried their curve: read the run folder's metrics.json if it is here."""
    try:
        epochs = json.loads((Path(str(record.get("run_dir", ""))) / "metrics.json").read_text())["epochs"]
        return [m["test_acc"] for m in epochs]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _summary_rows(study: optuna.Study, trials: list[FrozenTrial]) -> list[tuple[str, str]]:
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    rows = [("trials", ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "none")]
    done = complete_trials(trials)
    if done:
        best = study.best_trial
        size = best.user_attrs.get("params_count")
        rows.append(("best trial", f"#{best.number}: val_acc {best.value:.4f}"
                                   + (f", {size:,} parameters" if isinstance(size, int) else "")))
        rows.append(("best parameters", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in sorted(best.params.items()))))
    base = seed_baseline(trials)
    if base is not None:
        value = f"val_acc {base.value:.4f}" if base.value is not None else base.state.name.lower()
        rerun = reruns(trials).get(base.number)  # an interrupted or lost baseline is measured by its re-run
        if rerun is not None:
            value = rerun_note(rerun) + (f": val_acc {rerun.value:.4f}" if rerun.value is not None else "")
        rows.append(("seed baseline", f"#{base.number} (original CifarNet): {value}"))
    if study.user_attrs.get("target_accuracy") is not None:
        rows.append(("target accuracy", f"{study.user_attrs['target_accuracy']:.4f}"))
    return rows


def render_page(study: optuna.Study, trials: list[FrozenTrial], sections: list[Section]) -> str:
    name = html.escape(study.study_name)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in _summary_rows(study, trials))
    body = []
    for s in sections:
        chart = (s.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{s.key}",
                                  default_height="460px") if s.figure is not None else "")
        css = "note" if s.figure is not None or s.rows else "note missing"
        body.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>'
                    f'<p class="{css}">{html.escape(s.note)}</p>{chart}{_table(s.rows)}</section>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Study {name}</title>'
            f"<style>{CSS}</style><script>{plotly.offline.get_plotlyjs()}</script></head>"
            f"<body><h1>Study {name}</h1><table class=\"summary\">{rows}</table>{''.join(body)}</body></html>\n")


def _table(rows: tuple[tuple[str, ...], ...]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<table class="rows"><tr>{head}</tr>{body}</table>'


CSS = """body{font-family:sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:32px;border-bottom:1px solid #ddd}
table.summary th{text-align:left;padding-right:16px}
table.rows{border-collapse:collapse}table.rows td,table.rows th{border:1px solid #ddd;padding:2px 8px;text-align:left}p.note{color:#555}p.missing{color:#a33;font-weight:bold}"""
