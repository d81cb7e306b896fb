"""Deployable weights from a training checkpoint: the state a run was evaluated with, plus its config.

`hpo retrain` writes final.pt / best.pt with these; `hpo export` reads either them or a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifarnet.train import save_atomic

WEIGHTS_FORMAT = 1


def eval_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights a checkpoint was evaluated with: the EMA's when the run used one, else the model's."""
    if state.get("ema") is None:
        return state["model"]
    prefix = "module."  # torch.optim.swa_utils.AveragedModel keeps the averaged copy under .module
    return {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}


def save_weights(state: dict[str, Any], path: Path) -> None:
    """A deployable weights file: config + evaluated state_dict of the checkpoint's last epoch."""
    last = state["history"][-1]
    save_atomic({"format": WEIGHTS_FORMAT, "config": state["config"], "state_dict": eval_weights(state),
                 "epoch": last["epoch"], "test_acc": last["test_acc"]}, path)
