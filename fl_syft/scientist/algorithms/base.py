"""The interface every federated algorithm implements (in the spirit of Flower's ``Strategy``).

An algorithm declares the vetted functions the sites must approve, its settings (a frozen
dataclass whose fields become command-line flags), how it validates a site's result, and
how it aggregates; :class:`RoundAlgorithm` runs the common round loop (call every site,
aggregate, score, record) on top of two overridable steps, :meth:`RoundAlgorithm.collect`
and :meth:`RoundAlgorithm.aggregate`, so a variant (clip + noise, unmasking a secure sum)
wraps a step instead of copying the loop. A new algorithm is one module plus one line in
``fl_syft.scientist.algorithms.REGISTRY``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
from tqdm import tqdm

from fl_syft.common.errors import ConfigError
from fl_syft.scientist.rounds import Calls, Resilience, Site, call_sites, format_round, round_record

log = logging.getLogger("fl_syft.algorithms")

OnRound = Callable[[dict, list[dict]], None]  # (global params, history so far), after every round


def setting(default: Any, help: str, label: str | None = None, shown: str | None = None) -> Any:
    """A settings field: its command-line help (the flag is the field name, ``_`` -> ``-``), its
    ``label`` in reports (default: the field name) and its default as ``--help`` shows it."""
    return dataclasses.field(default=default, metadata={"help": help, "label": label,
                                                        "shown": str(default) if shown is None else shown})


class Algorithm(ABC):
    """A federated training algorithm over sites (see the module docstring)."""

    name: ClassVar[str]  # registry key, ``--algorithm`` value, stored in metrics.json
    title: ClassVar[str]  # how reports name it
    summary: ClassVar[str]  # one line for --help
    functions: ClassVar[tuple[Callable, ...]]  # vetted functions every site must approve
    settings_type: ClassVar[type]  # frozen dataclass with a ``check()`` raising ConfigError
    resumable: ClassVar[bool] = True  # can ``--resume`` continue it from a checkpoint
    needs_every_site: ClassVar[bool] = False  # True: a round without every site is meaningless (no --min-sites)

    def __init__(self, settings: Any = None):
        self.settings = settings if settings is not None else self.settings_type()
        self.settings.check()

    @abstractmethod
    def run(self, sites: Sequence[Site], X_test: np.ndarray, y_test: np.ndarray, *, params: dict | None = None,
            history: list[dict] | None = None, on_round: OnRound | None = None,
            resilience: Resilience = Resilience()) -> tuple[dict, list[dict]]:
        """Train; return (global params, history). ``params``/``history`` continue an earlier run."""

    def for_privacy(self, statuses: list[dict], epsilon: float | None = None, secure: bool = False) -> Algorithm:
        """This algorithm as it runs over sites with these published privacy statuses
        (``connect.SyftSite.privacy()``), spending ``epsilon`` per site if they enforce DP, with
        secure aggregation if ``secure`` (or if a site requires it). Raises ConfigError if it
        cannot run there."""
        if secure or any(s["policy"].get("require_secure_aggregation") for s in statuses):
            raise ConfigError(f"{self.name} has no secure-aggregation form (fedavg has): drop {{secure_aggregation}}"
                              " or use --algorithm fedavg")
        private = [s["site"] for s in statuses if s["policy"].get("epsilon") is not None]
        if private:
            raise ConfigError(f"{', '.join(private)} enforce differential privacy, which {self.name} cannot run "
                              f"under: {self.private_refusal}")
        if epsilon is not None:
            raise ConfigError(f"{{epsilon}} {epsilon:g}: no site enforces differential privacy: drop {{epsilon}}")
        return self

    private_refusal: ClassVar[str] = "it has no private form"

    def describe(self) -> list[tuple[str, str]]:
        """(setting, value) rows for the report (settings that do not apply are left out)."""
        rows = []
        for f in dataclasses.fields(self.settings):
            value = getattr(self.settings, f.name)
            if value is None:
                continue
            shown = ("on" if value else "off") if isinstance(value, bool) else str(value)
            rows.append((f.metadata.get("label") or f.name, shown))
        return rows

    def final_round(self, history: list[dict]) -> int:
        """The round whose global model ``run`` returned (the last, unless the algorithm says otherwise)."""
        return history[-1]["round"]

    def stop_reason(self, history: list[dict]) -> str:
        """Why the run stopped (for metrics.json and the report)."""
        return "all rounds asked for" if len(history) >= self.settings.rounds else "interrupted"


class RoundAlgorithm(Algorithm):
    """Rounds of: call ``function`` on every site (:meth:`collect`), combine (:meth:`aggregate`)."""

    function: ClassVar[str]  # the vetted function each round calls

    def site_config(self) -> dict:
        """The ``config`` argument sent to every site (plain Python types: PySyft checks them)."""
        return {}

    @abstractmethod
    def validate(self, site: str, result: object) -> None:
        """Raise SiteResultError unless ``result`` is a usable answer of ``function``."""

    @abstractmethod
    def aggregate(self, params: dict, results: dict[str, dict]) -> dict:
        """The next global params from this round's validated site results (pure)."""

    def annotate(self, record: dict) -> dict:
        """Add what this algorithm knows about a round to its record (default: nothing)."""
        return record

    def collect(self, pool: ThreadPoolExecutor, sites: Sequence[Site], params: dict, rnd: int,
                resilience: Resilience) -> tuple[Calls, dict[str, str]]:
        """Every site's validated answer to this round's call, and the sites that dropped out."""
        return call_sites(pool, sites, self.function, params, self.site_config(), resilience, rnd, self.validate)

    def run(self, sites: Sequence[Site], X_test: np.ndarray, y_test: np.ndarray, *, params: dict | None = None,
            history: list[dict] | None = None, on_round: OnRound | None = None,
            resilience: Resilience = Resilience()) -> tuple[dict, list[dict]]:
        """Rounds ``len(history)+1 .. settings.rounds``. A site that still fails after its retries
        is left out of that round (recorded under "dropped") if at least ``resilience.min_sites``
        answered; otherwise SitesFailed is raised (the rounds so far were passed to ``on_round``)."""
        params = params or {}
        history = list(history or [])
        first, last = len(history) + 1, self.settings.rounds
        with ThreadPoolExecutor(max_workers=len(sites)) as pool, \
                tqdm(total=last, initial=first - 1, desc="rounds", unit="round", leave=False) as bar:
            for rnd in range(first, last + 1):
                started = time.perf_counter()
                calls, dropped = self.collect(pool, sites, params, rnd, resilience)
                params = self.aggregate(params, {name: result for name, (result, _) in calls.items()})
                record = self.annotate(round_record(rnd, params, calls, dropped, started, X_test, y_test))
                history.append(record)
                bar.update()
                tqdm.write(format_round(record))
                if on_round:
                    on_round(params, history)
        return params, history
