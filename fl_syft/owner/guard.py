"""The data owner's policy, enforced inside the site on every call of a vetted function.

The approver vets the *code*; the guard vets each *call*: the config the scientist sends is
checked against the vetted function's schema (``common.protocol``: keys, exact types, the
ranges the site admits; a value outside them is refused with a one-line reason) and completed
with the schema's defaults, so the function always receives every key. The privacy-relevant
parameters (clipping norm, the published noisy row count) come from the owner's policy, and
under differential privacy every call on the private rows is charged to the site's ledger
before it runs. PySyft's run of the same call on the synthetic mock is not charged. The guard
is also the only thing that runs code on the rows: :meth:`Guard.call` runs the owner's own
installed vetted function, never code from a request
(``owner.datasite_guard.install`` makes it PySyft's executor in a datasite process; ``fl_syft.simulate`` calls
the same :class:`Guard`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fl_syft.common.errors import FlSyftError
from fl_syft.common.features import MAPS as FEATURE_MAPS
from fl_syft.common.policy import PrivacyPolicy
from fl_syft.common.protocol import (
    PIXELS_ONLY,
    PRIVACY_KEY,
    REQUIRED,
    SECAGG_KEY,
    Schema,
    SiteStatus,
    model_shapes,
    out_of_range,
    param_shapes,
    schema,
)
from fl_syft.common.secagg import model_hash
from fl_syft.common.secagg import summable as secagg_vector
from fl_syft.owner.approval import vetted_functions
from fl_syft.owner.ledger import BudgetExceeded, Ledger
from fl_syft.owner.secagg import SecAggSite
from fl_syft.owner.secagg_args import SecAggRefused, parse_secure

log = logging.getLogger("fl_syft.guard")

TINY = 1e-30  # model entries smaller than this in magnitude count as 0 (see canonical_params)
VETTED = vetted_functions()  # the owner's own installed functions: the only code run on the rows


class Refused(FlSyftError):
    """The site refuses this call; the message says why (it reaches the scientist as one line)."""


@dataclass
class Guard:
    """Checks and charges the calls of one site. ``rows``: how many rows it really holds
    (used only for the minimum-rows rules, never released)."""

    site: str
    policy: PrivacyPolicy
    rows: int
    ledger: Ledger | None = None  # required under DP
    audit: Callable[[dict], None] = lambda entry: None
    secagg: SecAggSite | None = None  # this site's side of secure aggregation (needs the policy's peers)
    _charged: dict[str, float] = field(default_factory=dict, repr=False)  # call id -> epsilon, until recorded

    def __post_init__(self) -> None:
        if self.policy.dp and self.ledger is None:
            raise ValueError("a DP policy needs a ledger")

    def publish_row_count(self, rng: np.random.Generator | None = None) -> int:
        """The row count the site publishes under DP: true count + N(0, count_noise^2), charged
        once (a kept ledger already holds it). The scientist divides gradient sums by it."""
        if self.ledger.row_count is None:
            rng = rng or np.random.default_rng()  # OS entropy
            value = max(1, int(round(self.rows + rng.normal(0.0, self.policy.count_noise))))
            after = self.ledger.charge(self.policy.count_noise, 1, "row count", value=value)
            self.audit({"event": "charged", "function": "row count", "noise_multiplier": self.policy.count_noise,
                        "epsilon_spent": after, "epsilon_total": self.policy.epsilon})
        return self.ledger.row_count

    def admit(self, function: str, global_params: dict, config: dict, requester: str = "",
              on_private_rows: bool = True, call: str = "") -> dict:
        """The config ``function`` runs with: checked against its schema and completed with the
        schema's defaults; raises Refused. On the private rows, a DP call is charged here, before
        it runs (the mock run is not).

        With secure aggregation (``config["secagg"]``, see :meth:`finish`) the charge is for the
        noise the sum carries once at least ``threshold`` sites are in it, and this site adds its
        1/sqrt(threshold) share of that noise variance. ``call``: the id the call's audit entries share."""
        keys = schema(function, self.policy.dp)
        if keys is None:
            raise Refused(f"{function} is not allowed under this site's policy "
                          f"({'differential privacy' if self.policy.dp else 'no DP'}; allowed: "
                          f"{', '.join(self.policy.functions())})")
        if type(config) is not dict or not all(type(k) is str for k in config):
            raise Refused("config must be a dict with string keys")
        secure = config.get(SECAGG_KEY)
        config = {k: v for k, v in config.items() if k != SECAGG_KEY}
        if secure is None and self.policy.require_secure_aggregation:
            raise Refused("this site requires secure aggregation: run with --secure-aggregation")
        if secure is not None:
            self._check_secure(secure, config)
        _check_config(config, keys, self.policy.min_noise)
        asked, config = config, keys.complete(config)
        if config["features"] != "pixels":  # no image left to take frequencies of
            pixel_keys = sorted(set(PIXELS_ONLY) & set(asked))
            if pixel_keys:
                raise Refused(f"config {', '.join(pixel_keys)} applies to features 'pixels' only, "
                              f"not {config['features']!r}")
            config = {k: v for k, v in config.items() if k not in PIXELS_ONLY}
        _check_params(global_params, FEATURE_MAPS[config["features"]].width, allow_velocity=self.policy.dp,
                      bound=self.policy.model_bound)
        if on_private_rows:  # on the completed config: an unset holdout still holds rows out
            self._check_rows(function, config)
        if not self.policy.dp:
            return config
        sigma, steps = float(config["noise_multiplier"]), int(config["local_steps"])
        if on_private_rows:
            try:
                before, after = self.ledger.spend(sigma, steps, "call", function=function, requester=requester)
            except BudgetExceeded as e:
                raise Refused(str(e)) from None
            self._charged[call] = after - before
            self.audit({"event": "charged", "call": call, "function": function, "requester": requester,
                        "noise_multiplier": sigma, "releases": steps, "epsilon_charged": after - before,
                        "epsilon_spent": after, "epsilon_total": self.policy.epsilon})
        if secure is not None:  # the sum carries sigma once threshold sites are in it: add our share
            config["noise_multiplier"] = sigma / math.sqrt(self.secagg.threshold)
        return {**config, PRIVACY_KEY: {"clip": self.policy.clip, "rows": self.ledger.row_count}}

    def _check_secure(self, secure: object, config: dict) -> None:
        if self.secagg is None:
            raise Refused("this site has no secure-aggregation peers in its policy (its owner lists them: "
                          "fl-syft launch does, fl-syft serve takes --peers)")
        try:
            secure = parse_secure(secure)
        except SecAggRefused as e:
            raise Refused(str(e)) from None
        peers = set(secure["peers"])  # checked again when masking; here before anything is charged
        if self.site not in peers or not peers <= set(self.secagg.peers) or len(peers) < self.secagg.threshold:
            raise Refused(f"config secagg peers must be at least {self.secagg.threshold} of this site's peers "
                          f"({', '.join(sorted(self.secagg.peers))}), this site among them")
        if self.policy.dp and config.get("local_steps") != 1:
            raise Refused("with secure aggregation each site adds only 1/sqrt(threshold) of the noise variance, "
                          "which protects the sum of one step, not a site's own trajectory: local_steps must be 1")

    def call(self, function: str, data: Mapping[str, dict], global_params: object, config: object,
             requester: str = "", on_private_rows: bool = True) -> object:
        """Run ``function`` on the site's rows the only way this site runs anything on them:
        admitted (bounds, charge), then the owner's own installed vetted function (never code
        from a request) on canonical copies of the arguments and the rows' features the config
        names (``data``: feature map name -> {"X", "y"}, ``owner.features.site_features``), then
        :meth:`finish`. A call on the private rows is audited when it ends (:meth:`record`)."""
        call = uuid.uuid4().hex[:12] if on_private_rows else ""
        try:
            admitted = self.admit(function, global_params, config, requester, on_private_rows, call)
            result = VETTED[function](data[admitted["features"]], canonical_params(global_params), admitted)
            answer = self.finish(function, config, global_params, result, on_private_rows)
        except Exception as e:
            if on_private_rows:  # a failure's message may hold anything: only its kind is recorded
                refused = isinstance(e, Refused)
                self.record(call, function, requester, "refused" if refused else "failed",
                            str(e) if refused else type(e).__name__)
            raise
        if on_private_rows:
            self.record(call, function, requester)
        return answer

    def record(self, call: str, function: str, requester: str, outcome: str = "served", reason: str = "") -> None:
        """A call's one outcome entry in the audit log: served, refused (``reason``: why) or failed,
        with the epsilon it was charged (an end after the charge keeps it) and what is then spent."""
        entry = {"event": "call", "call": call, "function": function, "requester": requester, "outcome": outcome,
                 **({"reason": reason[:1000]} if reason else {})}  # it may quote a caller's value: bounded
        if self.policy.dp:
            entry.update(epsilon_charged=self._charged.pop(call, 0.0), epsilon_spent=self.ledger.spent,
                         epsilon_total=self.policy.epsilon)
        self.audit(entry)

    def finish(self, function: str, config: dict, global_params: dict, result: object,
               on_private_rows: bool = True) -> object:
        """What leaves the site: ``result``, or under secure aggregation only its masked form
        (``config["secagg"]``: session, round, peers, the shares sent to us, which result fields
        to sum and which field weights them), our keys for the next round and how long masking took."""
        secure = config.get(SECAGG_KEY) if isinstance(config, dict) else None
        if secure is None:
            return result
        try:
            vector = secagg_vector(result, secure["fields"], secure["weight"])
        except (KeyError, TypeError, ValueError) as e:
            raise Refused(f"cannot sum {secure['fields']} weighted by {secure['weight']}: {e}") from None
        if not on_private_rows:  # PySyft's run on the mock: shaped like the real answer, nothing kept
            return {"masked": np.zeros(len(vector), np.uint64), "next_keys": {}, "mask_seconds": 0.0}
        started = time.perf_counter()
        try:
            masked = self.secagg.mask(secure["session"], secure["rnd"], secure["peers"], secure["shares"],
                                      model_hash(global_params), vector,
                                      contribution=contribution(function, config, secure))
            masked["next_keys"] = self.secagg.advertise(secure["session"], int(secure["rnd"]) + 1)
        except (SecAggRefused, ValueError) as e:
            raise Refused(str(e)) from None
        masked["mask_seconds"] = time.perf_counter() - started  # depends on the vector's length, not on rows
        return masked

    def secagg_steps(self, steps: object) -> dict:
        """The protocol steps asked for, as :meth:`SecAggSite.steps` takes them (checked there)."""
        if self.secagg is None:
            raise Refused("this site has no secure-aggregation peers in its policy")
        try:
            return self.secagg.steps(steps)
        except SecAggRefused as e:
            raise Refused(str(e)) from None

    def _check_rows(self, function: str, config: dict) -> None:
        """No call trains or evaluates on fewer than ``min_rows`` rows (with or without DP)."""
        held = int(self.rows * float(config.get("holdout", 0.0))) if function == "ml_experiment" else 0
        smallest = min(n for n in (self.rows - held, held) if n > 0)
        if smallest < self.policy.min_rows:
            raise Refused(f"config would train or evaluate on {smallest} rows; this site's minimum is "
                          f"{self.policy.min_rows}")

    def status(self) -> dict:
        """What the scientist may read: the policy, the budget spent, the published row count."""
        budget = {}
        if self.policy.dp:
            spent = self.ledger.spent
            budget = {"epsilon_spent": spent, "epsilon_remaining": max(0.0, self.policy.epsilon - spent),
                      "rows": self.ledger.row_count, "noise_multipliers": self.ledger.releases()}
        return SiteStatus(self.site, self.policy.to_dict(), time.strftime("%Y-%m-%dT%H:%M:%S%z"), **budget).to_dict()


def _check_params(params: object, width: int, allow_velocity: bool, bound: float) -> None:
    """A model this site computes on: exact dict of exact numpy arrays of the published shapes on
    ``width`` features, every entry finite and within +-``bound`` (the owner's ``model_bound``). The
    bound is what makes the vetted steps total: every feature is bounded (``vetted.local_training``),
    so every logit stays far inside float32 and float64 and no row's outcome can overflow."""
    if type(params) is not dict:
        raise Refused(f"global_params must be a dict, got {type(params).__name__}")
    shapes = param_shapes(width) if allow_velocity else model_shapes(width)
    allowed = set(shapes)
    unknown = sorted(map(repr, set(params) - allowed))
    if unknown:
        raise Refused(f"unknown global_params keys {', '.join(unknown)}; allowed: {sorted(allowed)}")
    if params and not {"coef", "intercept"} <= set(params):
        raise Refused("global_params must be {} or hold both coef and intercept")
    for key, value in params.items():
        if type(value) is not np.ndarray or value.dtype.kind not in "fiu" or value.shape != shapes[key] \
                or not np.all(np.abs(value.astype(np.float64)) <= bound):  # float64: no integer wrap; NaN fails
            raise Refused(f"global_params {key} must be a numpy array of finite numbers within +-{bound:g}, "
                          f"shape {shapes[key]}")


def canonical_params(params: dict) -> dict:
    """Float64 copies of an admitted model, entries below 1e-30 in magnitude set to 0: subnormal
    numbers take a slow path in the CPU, which would make a step's time depend on the rows they meet."""
    out = {}
    for key, value in params.items():
        array = np.array(value, dtype=np.float64)
        array[np.abs(array) < TINY] = 0.0
        out[key] = array
    return out


def contribution(function: str, config: dict, secure: dict) -> str:
    """What a site is asked to add to a secure sum (function, settings, fields, weight), as a digest
    every site of the sum signs: sites asked to contribute different things never unmask."""
    asked = {k: v for k, v in config.items() if k != SECAGG_KEY}
    doc = json.dumps([function, sorted((k, repr(v)) for k, v in asked.items()), list(secure["fields"]),
                      secure["weight"]])
    return hashlib.sha256(doc.encode()).hexdigest()


def _check_config(config: dict, keys: Schema, min_noise: float) -> None:
    """``config`` (a dict with string keys: ``Guard.admit`` has checked that) sets only ``keys``,
    every one without a default (under DP the charge depends on them), each of its exact type
    (bool is not an int here) within its range; the noise floor is the owner's ``min_noise``."""
    if PRIVACY_KEY in config:
        raise Refused(f"config key {PRIVACY_KEY!r} is set by the data owner's site, not by the caller")
    names = sorted(key.name for key in keys.keys)
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise Refused(f"unknown config keys {unknown}; this site allows {names}")
    for key in keys.keys:
        if key.name not in config:
            if key.default is REQUIRED:
                raise Refused(f"config must set {key.name} ({key.help}; it has no default)")
            continue
        problem = out_of_range(key, config[key.name], low=min_noise)
        if problem:
            raise Refused(f"config {key.name}={config[key.name]!r} {problem}")
