"""Retrain records on a study: every `hpo retrain` run is kept as its own study user_attr, never replaced.

A 1-epoch smoke retrain must not erase the 85% one, so each run writes the key "retrain:<start time>" (one
key per run: concurrent retrains never overwrite each other's record). The *reference* retrain, the one the
report and `hpo study status` headline, is the latest that reached its target, else the one with the best test
accuracy. Studies retrained before records were kept have one "retrain" user_attr; it is read as a record too.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import optuna

PREFIX = "retrain:"
LEGACY_KEY = "retrain"


def new_record_key() -> str:
    return PREFIX + datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def retrain_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Every retrain recorded on the study, oldest first, each with its user_attr key under "key"."""
    attrs = study.user_attrs
    records = [{**value, "key": key} for key, value in attrs.items()
               if (key.startswith(PREFIX) or key == LEGACY_KEY) and isinstance(value, dict)]
    return sorted(records, key=lambda r: str(r.get("started") or r.get("finished") or ""))


def reference_retrain(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest retrain that reached its target, else the finished one with the best test accuracy."""
    finished = [r for r in records if r.get("status") in ("reached", "missed")]
    reached = [r for r in finished if r["status"] == "reached"]
    if reached:
        return reached[-1]
    return max(finished, key=lambda r: r.get("best_test_acc") or 0.0, default=None)


def describe_record(r: dict[str, Any]) -> str:
    """One line per retrain, for `hpo study status` and the report."""
    if r.get("status") not in ("reached", "missed"):
        return (f"trial {r.get('trial')}: {r.get('status', '?')} since {r.get('started', '?')}, "
                f"max {r.get('max_epochs')} epochs, target {r.get('target')} ({r.get('run_dir')})")
    when = f"at epoch {r['epochs_to_target']}" if r.get("epochs_to_target") else f"not in {r.get('epochs_run')} epochs"
    return (f"trial {r.get('trial')}: {r['status']} target {r.get('target'):g} {when}, best test acc "
            f"{r.get('best_test_acc', 0):.4f} at epoch {r.get('best_epoch')} of a {r.get('max_epochs')}-epoch "
            f"schedule ({r.get('run_dir')}, {r.get('finished') or r.get('started', '')})")
