"""What a run writes, every round and at the end (the report's figures are ``scientist.report``).

After every round: ``metrics.json``, ``model.npz`` (the global model) and ``checkpoint.npz``:
config (with the run's mode: its privacy plan, its secure-aggregation threshold), history and
every array the algorithm carries (the model and, under DP, the momentum) in one atomic file,
so ``--resume`` continues from exactly that state. At the end also ``metrics.csv`` (a row per
round and site). Every file is owner-only (0600; a new ``--out`` directory 0700), written
atomically: metrics.json and the checkpoint name the sites and the connection file the run read
(beside the launcher's secrets), and what the sites released to this scientist stays theirs
until they choose to share it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from fl_syft.common.errors import ConfigError, FlSyftError
from fl_syft.common.features import FeatureMap, from_spec
from fl_syft.common.files import to_json, write_json, write_private

MODEL_KEYS = ("coef", "intercept")
FEATURES_KEY = "features"  # model.npz's entry: the feature map's spec, as JSON


def write_model(path: Path, params: dict, features: FeatureMap) -> None:
    """The global model alone: coef (10, width), intercept (10,), and ``features``: the spec of the
    feature map it is on (JSON), from which any scorer can rebuild the features."""
    _savez_atomic(path, **{key: np.asarray(params[key]) for key in MODEL_KEYS},
                  **{FEATURES_KEY: np.array(features.to_json())})


def _savez_atomic(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez``, atomically and owner-only (``common.files``): readers never see half a file."""
    write_private(path, _npz_bytes(arrays))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def load_model(path: Path) -> tuple[dict, FeatureMap]:
    """(params, the feature map they are on) of a ``model.npz``; ConfigError naming what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as z:
            params = {key: z[key] for key in MODEL_KEYS}
            spec = str(z[FEATURES_KEY]) if FEATURES_KEY in z.files else '{"name": "pixels", "version": 1, ' \
                '"input": "pixels/255"}'  # models saved before feature maps were on pixels
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{path} is not a model.npz of fl-syft ({e}): give the model.npz a run wrote") from None
    fmap = from_spec(spec)
    if params["coef"].shape != (10, fmap.width) or params["intercept"].shape != (10,):
        raise ConfigError(f"{path}: coef {params['coef'].shape} does not fit its features ({fmap.name}, "
                          f"{fmap.width} wide)")
    return params, fmap


def metrics(config: dict, history: list[dict], baselines: dict | None = None, final_round: int | None = None,
            stopped: str | None = None) -> dict:
    """The ``metrics.json`` document: config, per-round records, the final model's round (default
    the last), how many rounds ran and why the run stopped (once it has), baselines."""
    final = next((r for r in history if r["round"] == final_round), history[-1] if history else {})
    doc = {"config": config, "rounds": history,
           "final": {**{k: final.get(k) for k in ("round", "global_test_accuracy", "global_test_loss")},
                     "rounds_run": len(history), **({"stopped": stopped} if stopped else {})}}
    if baselines:
        doc["baselines"] = baselines
    return doc


RUN_FILES = ("metrics.json", "checkpoint.npz", "model.npz")


def check_out_dir(out: Path, overwrite: bool = False, resumable: bool = True) -> None:
    """Refuse, before anything runs, an ``out`` that cannot hold a run or already holds one
    (its checkpoint is what ``--resume`` needs: never overwritten unless asked; ``resumable``:
    the hint names ``--resume``, which continues runs over datasites, not simulations)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{{out}} {out} is a file, not a directory: choose a directory")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not overwrite:
        resume = f"continue it with fl-syft run --resume {out}, " if resumable else ""
        raise ConfigError(f"{{out}} {out} already holds a run ({', '.join(held)}): {resume}choose another {{out}}, "
                          "or replace it with {overwrite}")
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)  # a new directory: the scientist's alone
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{{out}} {out} is not writable ({e.strerror}): choose another {{out}}") from None


def write_outputs(out: Path, doc: dict, params: dict, features: FeatureMap) -> None:
    """``checkpoint.npz``, ``model.npz`` and ``metrics.json`` (``doc``: see :func:`metrics`) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_checkpoint(out / "checkpoint.npz", doc["config"], doc["rounds"], params)
    write_model(out / "model.npz", params, features)
    write_json(out / "metrics.json", doc)


class CheckpointError(FlSyftError):
    """A run directory cannot be resumed; the message says why."""


STATE = "state"  # the checkpoint's JSON entry; every other entry is one of the params' arrays


def write_checkpoint(path: Path, config: dict, history: list[dict], params: dict) -> None:
    """One file, so params and history can never be from different rounds."""
    if STATE in params:
        raise ValueError(f"a params array may not be named {STATE!r}")
    state = to_json({"config": config, "history": history})
    _savez_atomic(path, **{key: np.asarray(value) for key, value in params.items()}, **{STATE: np.array(state)})


def read_checkpoint(out: Path) -> tuple[dict, list[dict], dict]:
    """(config, history, params: every array saved) after the last completed round in ``out``."""
    path = out / "checkpoint.npz"
    if not path.exists():
        raise CheckpointError(f"--resume {out}: no checkpoint.npz there (is it the --out of an earlier run?)")
    try:
        with np.load(path) as z:
            state = json.loads(str(z[STATE]))
            params = {key: z[key] for key in z.files if key != STATE}
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); start a new run") from None
    return state["config"], state["history"], params


# --- at the end of a run ---------------------------------------------------------------------


def write_csv(path: Path, history: list[dict]) -> None:
    """One row per round and site: the global model's test metrics beside the site's own, the
    epsilon the site had spent once the round was done (under DP), why it was dropped (if it
    was), and its call's time where it is its own (under secure aggregation the sites are timed
    together: ``round_seconds``)."""
    import csv

    site_keys = sorted({k for r in history for m in r["sites"].values() for k in m if k != "class_counts"})
    with io.StringIO(newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["round", "site", "global_test_accuracy", "global_test_loss", "round_seconds", "epsilon_spent",
                         "dropped", *site_keys])
        for r in history:
            spent = r.get("epsilon_spent", {})
            rows = [*((site, m, "") for site, m in r["sites"].items()),
                    *((site, {}, why) for site, why in r.get("dropped", {}).items())]
            for site, m, why in rows:
                writer.writerow([r["round"], site, r["global_test_accuracy"], r["global_test_loss"], r["seconds"],
                                 spent.get(site, ""), why, *[m.get(k, "") for k in site_keys]])
        write_private(path, f.getvalue())
