"""Aggregation of site results: pure functions, no I/O (in the spirit of Flower's ``aggregate.py``).

A site result is the dict a vetted function returns. Each is validated before it is used,
and a bad one raises :class:`SiteResultError` naming the site, so a broken or hostile site
cannot silently poison the global model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fl_syft.common.errors import FlSyftError
from fl_syft.common.model import N_CLASSES


class SiteResultError(FlSyftError):
    """A site returned something that is not a valid model update."""

    def __init__(self, site: str, problem: str):
        super().__init__(f"site {site!r} returned an invalid result: {problem}")
        self.site = site


def validate_result(site: str, result: object, width: int) -> None:
    """Raise SiteResultError unless ``result`` has finite coef (10, width), intercept (10,),
    n_samples > 0 and class_counts (10,): non-negative integers adding up to n_samples
    (FedAvg's per-class weights come from them, so they must agree with the sample count)."""
    check_fields(site, result, {"coef": (N_CLASSES, width), "intercept": (N_CLASSES,),
                                 "class_counts": (N_CLASSES,)})
    counts = np.asarray(result["class_counts"])
    if not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0:
        raise SiteResultError(site, f"class_counts must be {N_CLASSES} non-negative integers")
    if counts.sum() != result["n_samples"]:
        raise SiteResultError(site, f"class_counts add up to {counts.sum()}, n_samples is {result['n_samples']}")


def validate_gradient(site: str, result: object, width: int) -> None:
    """Raise SiteResultError unless ``result`` is a finite ``lr_loss_grad`` answer on ``width`` features."""
    check_fields(site, result, {"loss": (), "grad_coef": (N_CLASSES, width), "grad_intercept": (N_CLASSES,)})


def check_fields(site: str, result: object, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise SiteResultError unless ``result`` is a dict with finite numeric arrays of these
    ``shapes`` and a positive integer n_samples."""
    if not isinstance(result, Mapping):
        raise SiteResultError(site, f"expected a dict, got {type(result).__name__}")
    missing = sorted({*shapes, "n_samples"} - set(result))
    if missing:
        raise SiteResultError(site, f"missing keys {missing}")
    for key, shape in shapes.items():
        value = np.asarray(result[key])
        if value.shape != shape:
            raise SiteResultError(site, f"{key} has shape {value.shape}, expected {shape}")
        if not np.issubdtype(value.dtype, np.number) or not np.all(np.isfinite(value)):
            raise SiteResultError(site, f"{key} contains NaN, infinite or non-numeric values")
    n = result["n_samples"]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise SiteResultError(site, f"n_samples must be a positive integer, got {n!r}")


def sum_gradients(results: Mapping[str, Mapping], width: int) -> dict:
    """Totals of the sites' ``lr_loss_grad`` answers on ``width`` features: the centralized data term exactly.

    Returns {"loss": float, "grad_coef": (10, width), "grad_intercept": (10,), "n_samples": int}.
    """
    if not results:
        raise ValueError("sum_gradients needs at least one site result")
    for site, result in results.items():
        validate_gradient(site, result, width)
    rows = list(results.values())
    return {"loss": float(sum(r["loss"] for r in rows)),
            "grad_coef": np.sum([np.asarray(r["grad_coef"], np.float64) for r in rows], axis=0),
            "grad_intercept": np.sum([np.asarray(r["grad_intercept"], np.float64) for r in rows], axis=0),
            "n_samples": int(sum(r["n_samples"] for r in rows))}
