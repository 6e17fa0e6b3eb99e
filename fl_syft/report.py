"""Write a run's outputs: ``metrics.json`` and ``model.npz`` (atomically, after every round)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def write_json(path: Path, obj: object) -> None:
    """Write JSON atomically: a crash mid-write never leaves a truncated file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_plain) + "\n")
    tmp.replace(path)


def write_model(path: Path, params: dict) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, coef=np.asarray(params["coef"]), intercept=np.asarray(params["intercept"]))
    tmp.replace(path)


def load_model(path: Path) -> dict:
    with np.load(path) as z:
        return {"coef": z["coef"], "intercept": z["intercept"]}


def metrics(config: dict, history: list[dict]) -> dict:
    """The ``metrics.json`` document: config, per-round records, and the final round."""
    final = history[-1] if history else {}
    return {"config": config, "rounds": history,
            "final": {k: final.get(k) for k in ("round", "global_test_accuracy", "global_test_loss")}}


def write_outputs(out: Path, config: dict, history: list[dict], params: dict) -> None:
    """``metrics.json`` and ``model.npz`` in ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    write_model(out / "model.npz", params)
    write_json(out / "metrics.json", metrics(config, history))


def _plain(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
