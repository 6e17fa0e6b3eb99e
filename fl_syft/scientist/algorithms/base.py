"""The interface every federated algorithm implements (in the spirit of Flower's ``Strategy``).

An algorithm declares the vetted functions the sites must approve and its settings (a frozen
dataclass whose fields become command-line flags). A :class:`RoundAlgorithm` is a set of
hooks the round loop (``scientist.runner``) calls: :meth:`~RoundAlgorithm.configure` what to
send, :meth:`~RoundAlgorithm.validate` each site's answer, :attr:`~RoundAlgorithm.summed`
which weighted sums of the answers it needs, and :meth:`~RoundAlgorithm.aggregate` the next
model from those sums (pure). Whoever forms the sums (the loop from the answers it sees, or
secure aggregation from masked answers it cannot see) hands them to ``aggregate``, so a
wrapper (:class:`Wrapper`: DP, secure aggregation) changes one hook and delegates the rest.

A new algorithm is one module plus one line in ``fl_syft.scientist.algorithms.REGISTRY``; a
new wrapper one module plus one line in ``WRAPPERS``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np

from fl_syft.common import secagg
from fl_syft.common.errors import ConfigError
from fl_syft.common.features import DEFAULT as DEFAULT_FEATURES
from fl_syft.common.features import feature_map
from fl_syft.common.protocol import Schema, model_shapes, out_of_range
from fl_syft.scientist.rounds import Calls, Resilience, Site, call_sites

OnRound = Callable[[dict, list[dict]], None]  # (global params, history so far), after every round


def setting(default: Any, help: str, label: str | None = None, shown: str | None = None) -> Any:
    """A settings field: its command-line help (the flag is the field name, ``_`` -> ``-``), its
    ``label`` in reports (default: the field name) and its default as ``--help`` shows it."""
    return dataclasses.field(default=default, metadata={"help": help, "label": label,
                                                        "shown": str(default) if shown is None else shown})


@dataclass(frozen=True)
class NoSettings:
    def check(self) -> None:
        pass


class State(NamedTuple):
    """Everything a run carries from round to round: the global params (every array the
    algorithm keeps, momentum included) and the rounds' records (never mutated: copied)."""

    params: dict = {}  # noqa: RUF012
    history: list = []  # noqa: RUF012


class Algorithm(ABC):
    """A federated training algorithm over sites (see the module docstring)."""

    name: ClassVar[str]  # registry key, ``--algorithm`` value, stored in metrics.json
    title: ClassVar[str]  # how reports name it
    summary: ClassVar[str]  # one line for --help
    functions: ClassVar[tuple[Callable, ...]]  # vetted functions every site must approve
    settings_type: ClassVar[type]  # frozen dataclass with a ``check()`` raising ConfigError
    default_rounds: ClassVar[int]
    rounds_help: ClassVar[str]  # the default rounds, for --help
    rounds_label: ClassVar[str] = "rounds"  # how the report names the rounds asked for
    resumable: ClassVar[bool] = True  # can ``--resume`` continue it from a checkpoint
    needs_every_site: ClassVar[bool] = False  # True: a round without every site is meaningless (no --min-sites)
    # None: the DP wrapper applies. It replaces the local training and the averaging with noisy
    # gradient steps (reading only the inner's C), so a subclass that changes either must say so
    # again itself: the wrapper looks for None in the class's own body, not inherited.
    private_refusal: ClassVar[str | None] = "it has no private form"
    plain_only: ClassVar[tuple[str, ...]] = ()  # settings that do not apply under the sites' DP

    def __init__(self, settings: Any = None, features: str = DEFAULT_FEATURES):
        self.settings = settings if settings is not None else self.settings_type()
        self.settings.check()
        self.features = feature_map(features)  # the fixed map the model is on: its width sets every shape

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The model's arrays and their shapes on this run's features."""
        return model_shapes(self.features.width)

    @abstractmethod
    def run(self, sites: Sequence[Site], X_test: np.ndarray, y_test: np.ndarray, *, rounds: int,
            state: State = State(), on_round: OnRound | None = None,
            resilience: Resilience = Resilience(), echo: bool = True) -> State:
        """Train up to round ``rounds``, continuing ``state``; return the state after the last round
        (``X_test``: the test set's features; ``echo``: print a line per round)."""

    def rounds_for(self, asked: int | None) -> int:
        """The rounds a run makes: ``asked``, or this algorithm's default."""
        return self.default_rounds if asked is None else asked

    def describe(self) -> list[tuple[str, str]]:
        """(setting, value) rows for the report (settings that do not apply are left out)."""
        return describe_settings(self.settings)

    def training(self) -> dict:
        """The settings a run saves (metrics.json, checkpoint) and a resumed run is rebuilt with."""
        return dataclasses.asdict(self.settings)

    def final_round(self, history: list[dict]) -> int:
        """The round whose global model ``run`` returned (the last, unless the algorithm says otherwise)."""
        return history[-1]["round"]

    def stop_reason(self, history: list[dict], rounds: int) -> str:
        """Why the run stopped (for metrics.json and the report)."""
        return "all rounds asked for" if len(history) >= rounds else "interrupted"


def settings_names(owner: Any) -> set[str]:
    """The names of an algorithm's (or wrapper's) settings: its flags."""
    return {f.name for f in dataclasses.fields(owner.settings_type)}


def describe_settings(settings: Any) -> list[tuple[str, str]]:
    rows = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value is not None:
            rows.append((f.metadata.get("label") or f.name,
                         ("on" if value else "off") if isinstance(value, bool) else str(value)))
    return rows


def check_against(settings: Any, schema: Schema) -> None:
    """Raise ConfigError for a setting outside what the sites admit (the vetted function's
    schema): refused here, before anything is sent, in the words a site would use."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        problem = None if value is None else out_of_range(schema[f.name], value)
        if problem:
            raise ConfigError(f"{{{f.name}}} {value!r} {problem} (what the sites admit)")


@dataclass(frozen=True)
class Summed:
    """Which weighted sums of the sites' answers ``aggregate`` needs: each of ``fields`` (name ->
    shape) times ``weight`` (a name in ``common.secagg.WEIGHTS``: one value per site, or one per
    class row, of ``weight_shape``), summed over the sites, and the weights' sum."""

    fields: dict[str, tuple[int, ...]]
    weight: str
    weight_shape: tuple[int, ...] = ()

    def of(self, results: Sequence[dict]) -> dict[str, np.ndarray]:
        """The sums of these answers, as secure aggregation's unmasking gives them."""
        total = sum(secagg.summable(r, list(self.fields), self.weight) for r in results)
        return self.unpack(total)

    def unpack(self, total: np.ndarray) -> dict[str, np.ndarray]:
        return secagg.unsummable(total, self.fields, self.weight_shape)


@dataclass
class Collected:
    """One round's answers: the sums ``aggregate`` needs, each answering site's validated result
    and call time (an empty result where the answer stays hidden), the dropped sites, and what
    the round record should say about how it was collected."""

    sums: dict[str, np.ndarray]
    calls: Calls
    dropped: dict[str, str]
    notes: dict = field(default_factory=dict)


class RoundAlgorithm(Algorithm):
    """Rounds of: send every site the model (:meth:`configure`), combine their answers (:meth:`aggregate`)."""

    function: ClassVar[str]  # the vetted function each round calls
    summed: Summed

    def configure(self, params: dict) -> tuple[dict, dict]:
        """(the params sent to every site, the ``config`` argument: plain Python types, PySyft checks them)."""
        return params, {}

    @abstractmethod
    def validate(self, site: str, result: object) -> None:
        """Raise SiteResultError unless ``result`` is a usable answer of ``function``."""

    @abstractmethod
    def aggregate(self, params: dict, sums: dict[str, np.ndarray]) -> dict:
        """The next global params from this round's sums (``summed``; pure)."""

    def collect(self, pool: ThreadPoolExecutor, sites: Sequence[Site], sent: dict, config: dict, rnd: int,
                resilience: Resilience) -> Collected:
        """Every site's validated answer to this round's call, summed as ``summed`` says."""
        calls, dropped = call_sites(pool, sites, self.function, sent, config, resilience, rnd, self.validate)
        return Collected(self.summed.of([result for result, _ in calls.values()]), calls, dropped)

    def annotate(self, record: dict) -> dict:
        """Add what this algorithm knows about a round to its record (default: nothing)."""
        return record

    def run(self, sites: Sequence[Site], X_test: np.ndarray, y_test: np.ndarray, *, rounds: int,
            state: State = State(), on_round: OnRound | None = None,
            resilience: Resilience = Resilience(), echo: bool = True) -> State:
        from fl_syft.scientist.runner import run_rounds

        return run_rounds(self, sites, X_test, y_test, rounds=rounds, state=state, on_round=on_round,
                          resilience=resilience, echo=echo)


class Wrapper(RoundAlgorithm):
    """A round algorithm around another (``inner``): every hook is the inner one's unless the
    wrapper overrides it (the round loop calls the outermost wrapper's hooks only, so how the
    answers are collected is the outermost one's: see ``WRAPPERS``' order). ``key`` names the
    wrapper's entry in a run's mode: the data it was built with (e.g. the privacy plan), saved
    in metrics.json and the checkpoint so a resumed run is rebuilt exactly."""

    key: ClassVar[str]
    suffix: ClassVar[str]  # added to the inner's title

    def __init__(self, inner: RoundAlgorithm, data: dict, settings: Any = None):
        self.inner, self.data = inner, data
        self.name, self.function, self.functions = inner.name, inner.function, inner.functions
        self.title, self.needs_every_site = inner.title + self.suffix, inner.needs_every_site
        self.summed, self.default_rounds, self.rounds_label = inner.summed, inner.default_rounds, inner.rounds_label
        super().__init__(settings, inner.features.name)

    @classmethod
    def wraps(cls, algorithm: type[Algorithm]) -> bool:
        """Can this wrapper run around ``algorithm`` at all (its settings are then the algorithm's flags)?"""
        return issubclass(algorithm, RoundAlgorithm)

    @classmethod
    @abstractmethod
    def plan(cls, inner: RoundAlgorithm, statuses: list[dict], asked: Any, mode: dict) -> dict | None:
        """This wrapper's data for a run of ``inner`` over sites with these published ``statuses``
        (``asked``: the run request; ``mode``: the data of the wrappers planned before this one),
        or None if it does not apply; raises ConfigError if the run cannot go ahead."""

    def configure(self, params: dict) -> tuple[dict, dict]:
        return self.inner.configure(params)

    def validate(self, site: str, result: object) -> None:
        self.inner.validate(site, result)

    def aggregate(self, params: dict, sums: dict[str, np.ndarray]) -> dict:
        return self.inner.aggregate(params, sums)

    def annotate(self, record: dict) -> dict:
        return self.inner.annotate(record)

    def rounds_for(self, asked: int | None) -> int:
        return self.inner.rounds_for(asked)

    def training(self) -> dict:
        return self.inner.training()

    def describe(self) -> list[tuple[str, str]]:
        return self.inner.describe()
