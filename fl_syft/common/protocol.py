"""The contract between a data owner's site and the data scientist, in one place.

Both sides import this module and nothing of each other: the config keys only one side may
set, the endpoint paths, the shapes of the models exchanged, the refusal a site sends (and the
scientist recognises without guessing from error text), the privacy status a site publishes,
and one schema per vetted function holding every config key's type, default and the range a
site admits. The site completes and checks a call's config from the schema
(``owner.guard``); the scientist's settings take their defaults and ranges from it, so a value
a site would refuse is refused on the scientist's machine before anything is sent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from fl_syft.common.features import DEFAULT as DEFAULT_FEATURES
from fl_syft.common.features import MAPS as FEATURE_MAPS
from fl_syft.common.model import N_CLASSES

# --- config keys and endpoints ------------------------------------------------------------------

PRIVACY_KEY = "privacy"  # config key only the site sets: {"clip", "rows"} under DP
SECAGG_KEY = "secagg"  # config key of a securely aggregated call (read and removed by the site)
STATUS_PATH = "fl_syft.privacy"  # the site's API endpoint publishing its SiteStatus
SECAGG_PATH = "fl_syft.secagg"  # the path a signed secure-aggregation request names
SECAGG_ROUTE = "/fl-syft/secagg"  # the owner's HTTP route for those requests, under /api/v2

# --- the models exchanged: multinomial logistic regression on a feature map (``common.features``) ---


def model_shapes(width: int) -> dict[str, tuple[int, ...]]:
    """The model on ``width`` features: coef (10, width), intercept (10,)."""
    return {"coef": (N_CLASSES, width), "intercept": (N_CLASSES,)}


def velocity_shapes(width: int) -> dict[str, tuple[int, ...]]:
    """The momentum a DP run carries: velocity_coef (10, width), velocity_intercept (10,)."""
    return {"velocity_coef": (N_CLASSES, width), "velocity_intercept": (N_CLASSES,)}


def param_shapes(width: int) -> dict[str, tuple[int, ...]]:
    """What a call under DP may send (and gets back): the model and its momentum."""
    return {**model_shapes(width), **velocity_shapes(width)}

# --- refusals -------------------------------------------------------------------------------------

# ``what`` may be two words ("secure aggregation"); a reason may span lines of PySyft's error text.
_REFUSAL = re.compile(r"(?P<site>[\w.-]+) refused (?P<what>[\w.-]+(?: [\w.-]+)*): (?P<reason>.*?) "
                      r"\[fl-syft refusal\]", re.S)


@dataclass(frozen=True)
class Refusal:
    """A site's owner refused a call by policy (bounds, budget, the request's shape): asking again
    gets the same answer. ``str()`` is the one line the scientist sees; :meth:`find` reads it back
    out of whatever error text PySyft wraps it in."""

    site: str
    what: str  # the vetted function, or "secure aggregation"
    reason: str

    def __str__(self) -> str:
        return f"{self.site} refused {self.what}: {self.reason} [fl-syft refusal]"

    @property
    def line(self) -> str:
        """The refusal for a person, on one line (at most ~400 characters), without its tag."""
        reason = " ".join(self.reason.split())
        return f"{self.site} refused {self.what}: {reason[:400]}"

    @classmethod
    def find(cls, text: str) -> Refusal | None:
        match = _REFUSAL.search(text)
        return None if match is None else cls(match["site"], match["what"], match["reason"])


# --- the status a site publishes -------------------------------------------------------------------


@dataclass(frozen=True)
class SiteStatus:
    """What a site publishes at ``STATUS_PATH``: its owner's policy (``PrivacyPolicy.to_dict()``)
    and, under DP, its ledger's spend, its noisy row count and every noise multiplier it released
    (multiplier (repr) -> how many releases), from which the scientist plans a run."""

    site: str
    policy: dict
    time: str = ""
    epsilon_spent: float | None = None
    epsilon_remaining: float | None = None
    rows: int | None = None
    noise_multipliers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        doc = {"site": self.site, "policy": self.policy, "time": self.time}
        if self.epsilon_spent is not None:
            doc.update(epsilon_spent=self.epsilon_spent, epsilon_remaining=self.epsilon_remaining, rows=self.rows,
                       noise_multipliers=self.noise_multipliers)
        return doc

    @classmethod
    def from_dict(cls, doc: dict) -> SiteStatus:
        known = {"site", "policy", "time", "epsilon_spent", "epsilon_remaining", "rows", "noise_multipliers"}
        return cls(**{k: v for k, v in doc.items() if k in known})


# --- the vetted functions' config schemas ------------------------------------------------------------

REQUIRED = object()  # a key without a default: the caller must set it


@dataclass(frozen=True)
class Key:
    """One config key of a vetted function: its type, default (or REQUIRED) and admitted range
    (inclusive; ``low`` None: the owner's policy sets it, as for the noise floor)."""

    name: str
    kind: type  # int, float, bool or str
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    help: str = ""
    choices: tuple[str, ...] = ()  # a str key's admitted values

    @property
    def bound(self) -> Any:
        """As the policy publishes it: the choices of a str, the type for flags and seeds, else (low, high)."""
        if self.choices:
            return list(self.choices)
        return self.kind if self.kind is bool or (self.low is None and self.high is None) else (self.low, self.high)


@dataclass(frozen=True)
class Schema:
    """The config of one vetted function in one mode (with or without the site's DP)."""

    function: str
    keys: tuple[Key, ...] = ()

    def __getitem__(self, name: str) -> Key:
        for key in self.keys:
            if key.name == name:
                return key
        raise KeyError(name)

    def bounds(self) -> dict[str, Any]:
        return {k.name: k.bound for k in self.keys}

    def defaults(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.keys if k.default is not REQUIRED}

    def complete(self, config: dict) -> dict:
        """``config`` with every unset key at its default (what the vetted function runs with)."""
        return {**self.defaults(), **config}


# Every vetted function runs on one of the site's feature maps (computed once per shard, by the site).
FEATURES = Key("features", str, DEFAULT_FEATURES, help="the fixed feature map the model is on "
               "(scattering: kymatio Scattering2D J=2 L=8, group-normalised; pixels: pixels/255)",
               choices=tuple(FEATURE_MAPS))
PIXELS_ONLY = ("frequencies",)  # keys that describe an image's pixels: refused on other feature maps

ML_EXPERIMENT = Schema("ml_experiment", (
    FEATURES,
    Key("local_iters", int, 20, 1, 1000, "local lbfgs iterations per site and round"),
    Key("C", float, 1.0, 1e-4, 1e4, "inverse L2 strength, as scikit-learn's C"),
    Key("holdout", float, 0.05, 0.0, 0.5, "fraction of each site's rows held out to score the received model"),
    Key("seed", int, 0, help="seed of each site's holdout split"),
    Key("logit_adjust", bool, True, help="train with the site's own label prior in the intercepts and return "
                                         "prior-free models (helps under label skew)"),
))
ML_EXPERIMENT_DP = Schema("ml_experiment", (
    FEATURES,
    Key("local_steps", int, REQUIRED, 1, 100, "noisy gradient steps per site and round"),
    Key("lr", float, 4.0, 1e-4, 100.0, "step size on the mean gradient"),
    Key("momentum", float, 0.9, 0.0, 0.99, "momentum of the gradient steps, carried across rounds"),
    Key("l2", float, 0.0, 0.0, 1.0, "L2 strength per row"),
    Key("frequencies", int, 14, 1, 28, "pixels only: the steps move the model only within the K x K lowest "
                                       "spatial frequencies of the image, where the noise goes too (28: every pixel)"),
    Key("noise_multiplier", float, REQUIRED, None, 1e6, "noise std per step / clipping norm"),
))
LR_LOSS_GRAD = Schema("lr_loss_grad", (FEATURES,))

# mode ("plain" or "dp") -> function -> schema: what a site with that policy lets run.
SCHEMAS: dict[str, dict[str, Schema]] = {
    "plain": {s.function: s for s in (ML_EXPERIMENT, LR_LOSS_GRAD)},
    "dp": {s.function: s for s in (ML_EXPERIMENT_DP,)},
}


def schema(function: str, dp: bool) -> Schema | None:
    """The schema of ``function`` at a site with (``dp``) or without DP; None: it does not run there."""
    return SCHEMAS["dp" if dp else "plain"].get(function)


def out_of_range(key: Key, value: Any, low: float | None = None) -> str | None:
    """Why ``value`` is not admitted for ``key``, as a phrase ("is outside [1, 1000]", "must be an
    integer", "must be a bool"; ``low`` replaces an owner-set floor), or None if it is."""
    if key.choices:
        return None if type(value) is str and value in key.choices else f"must be one of {', '.join(key.choices)}"
    if isinstance(key.bound, type):  # a flag or a seed: its exact type, whatever floor is given
        return None if type(value) is key.kind else f"must be a {key.kind.__name__}"
    lo = key.low if key.low is not None else low
    lo, hi = -math.inf if lo is None else lo, math.inf if key.high is None else key.high
    # Not math.isfinite(value) alone: an int too large for a float raises there. NaN fails the comparison.
    if type(value) not in (int, float) or (type(value) is float and not math.isfinite(value)) \
            or not lo <= value <= hi:
        return f"is outside [{lo:g}, {hi:g}]"
    if key.kind is int and type(value) is not int:
        return "must be an integer"
    return None
