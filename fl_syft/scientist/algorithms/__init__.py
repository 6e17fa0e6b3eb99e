"""Federated algorithms and the wrappers around them, by name.

A new algorithm is a module here and one line in REGISTRY; a new wrapper a module and one line
in WRAPPERS. A run's *mode* is data: {wrapper key: the data it was planned with} (e.g. the
privacy plan, the secure-aggregation threshold), saved with the run, so :func:`rebuild` gives a
resumed run exactly the algorithm it ran with.
"""

from __future__ import annotations

import json
from typing import Any

from fl_syft.common.errors import ConfigError
from fl_syft.common.features import from_spec
from fl_syft.scientist.algorithms.base import Algorithm, RoundAlgorithm, State, Wrapper, settings_names
from fl_syft.scientist.algorithms.fedavg import FedAvg
from fl_syft.scientist.algorithms.lbfgs import Lbfgs
from fl_syft.scientist.algorithms.private import Private
from fl_syft.scientist.algorithms.secure import Secure

REGISTRY: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FedAvg, Lbfgs)}
# Outermost first: each is planned in this order (seeing the ones before it) and wraps the next.
WRAPPERS: tuple[type[Wrapper], ...] = (Secure, Private)


def build(name: str, given: dict[str, Any], statuses: list[dict], asked: Any) -> Algorithm:
    """Algorithm ``name`` with the ``given`` settings (flat: the algorithm's and the wrappers'),
    on the request ``asked``'s ``features``, wrapped as the sites' published ``statuses`` and the
    request (its ``epsilon``, ``secure``, ``rounds``, ``settings``) make it run; ConfigError if it
    cannot run there."""
    cls = REGISTRY[name]
    inner = cls(cls.settings_type(**{k: v for k, v in given.items() if k in settings_names(cls)}), asked.features)
    mode: dict[str, dict] = {}
    for wrapper in WRAPPERS:
        data = wrapper.plan(inner, statuses, asked, mode)
        if data is not None:
            mode[wrapper.key] = data
    return compose(inner, mode)


def compose(inner: Algorithm, mode: dict[str, dict]) -> Algorithm:
    """``inner`` inside the wrappers ``mode`` names, innermost first."""
    algorithm = inner
    for wrapper in reversed(WRAPPERS):
        if wrapper.key in mode:
            data = mode[wrapper.key]
            settings = wrapper.settings_type(**data.get("settings", {}))
            algorithm = wrapper(algorithm, data, settings)
    return algorithm


def mode_of(algorithm: Algorithm) -> dict[str, dict]:
    """{wrapper key: its data} of the wrappers around ``algorithm`` (what :func:`compose` takes)."""
    mode = {}
    while isinstance(algorithm, Wrapper):
        mode[algorithm.key] = algorithm.data
        algorithm = algorithm.inner
    return mode


def rebuild(config: dict) -> Algorithm:
    """The algorithm a run's saved ``config`` (metrics.json, checkpoint) describes: its settings
    and its mode (under DP with its saved plan: a resumed run keeps its noise)."""
    cls = REGISTRY[config.get("algorithm", "fedavg")]
    own = {k: v for k, v in config["training"].items() if k in settings_names(cls)}
    features = from_spec(json.dumps(config["features"])).name if "features" in config else "pixels"  # older runs
    return compose(cls(cls.settings_type(**own), features),
                   {w.key: config[w.key] for w in WRAPPERS if config.get(w.key)})


def setting_owners(name: str) -> list[type]:
    """Algorithm ``name`` and the wrappers that can run around it: whose settings are its flags."""
    cls = REGISTRY[name]
    return [cls, *(w for w in WRAPPERS if w.wraps(cls))]


def check_given(name: str, given: dict[str, Any]) -> None:
    """Refuse a setting neither algorithm ``name`` nor a wrapper around it has (another algorithm's)."""
    known = set().union(*(settings_names(owner) for owner in setting_owners(name)))
    foreign = sorted(set(given) - known)
    if foreign:
        raise ConfigError(f"{', '.join('{' + n + '}' for n in foreign)}: not a setting of --algorithm {name}: "
                          "drop it")


__all__ = ["REGISTRY", "WRAPPERS", "Algorithm", "RoundAlgorithm", "State", "FedAvg", "Lbfgs", "build", "compose",
           "mode_of", "rebuild", "check_given", "setting_owners"]
