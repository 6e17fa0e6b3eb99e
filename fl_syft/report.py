"""Write a run's outputs after every round: ``metrics.json``, ``model.npz`` and
``checkpoint.npz`` (params + config + history in one atomic file, for ``--resume``)."""

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
    """``checkpoint.npz``, ``model.npz`` and ``metrics.json`` in ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    write_checkpoint(out / "checkpoint.npz", config, history, params)
    write_model(out / "model.npz", params)
    write_json(out / "metrics.json", metrics(config, history))


class CheckpointError(Exception):
    """A run directory cannot be resumed; the message says why."""


def write_checkpoint(path: Path, config: dict, history: list[dict], params: dict) -> None:
    """One file, so params and history can never be from different rounds."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    state = json.dumps({"config": config, "history": history}, default=_plain)
    np.savez(tmp, coef=np.asarray(params["coef"]), intercept=np.asarray(params["intercept"]),
             state=np.array(state))
    tmp.replace(path)


def read_checkpoint(out: Path) -> tuple[dict, list[dict], dict]:
    """(config, history, params) saved after the last completed round in ``out``."""
    path = out / "checkpoint.npz"
    if not path.exists():
        raise CheckpointError(f"--resume {out}: no checkpoint.npz there (is it the --out of an earlier run?)")
    try:
        with np.load(path) as z:
            state = json.loads(str(z["state"]))
            params = {"coef": z["coef"], "intercept": z["intercept"]}
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); start a new run") from None
    return state["config"], state["history"], params


def _plain(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
