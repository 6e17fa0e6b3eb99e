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
(:func:`install` makes it PySyft's executor in a datasite process; ``fl_syft.simulate`` calls
the same :class:`Guard`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fl_syft.common.errors import FlSyftError
from fl_syft.common.features import MAPS as FEATURE_MAPS
from fl_syft.common.policy import PrivacyPolicy
from fl_syft.common.protocol import (
    PIXELS_ONLY,
    PRIVACY_KEY,
    REQUIRED,
    SECAGG_KEY,
    SECAGG_PATH,
    SECAGG_ROUTE,
    STATUS_PATH,
    Refusal,
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
              on_private_rows: bool = True) -> dict:
        """The config ``function`` runs with: checked against its schema and completed with the
        schema's defaults; raises Refused. On the private rows, a DP call is charged here, before
        it runs (the mock run is not).

        With secure aggregation (``config["secagg"]``, see :meth:`finish`) the charge is for the
        noise the sum carries once at least ``threshold`` sites are in it, and this site adds its
        1/sqrt(threshold) share of that noise variance."""
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
                after = self.ledger.charge(sigma, steps, "call", function=function, requester=requester)
            except BudgetExceeded as e:
                self.audit({"event": "refused", "function": function, "requester": requester, "reason": str(e)})
                raise Refused(str(e)) from None
            self.audit({"event": "charged", "function": function, "requester": requester, "noise_multiplier": sigma,
                        "releases": steps, "epsilon_spent": after, "epsilon_total": self.policy.epsilon})
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
        :meth:`finish`."""
        admitted = self.admit(function, global_params, config, requester, on_private_rows)
        result = VETTED[function](data[admitted["features"]], canonical_params(global_params), admitted)
        return self.finish(function, config, global_params, result, on_private_rows)

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


# --- inside a PySyft datasite -----------------------------------------------------------------

ACTIVE: dict[str, Guard] = {}  # the guard of this datasite process (read by its API endpoint)
FRESH_SECONDS = 300  # a signed secure-aggregation request older than this is refused (replays)


def account_email(server, verify_key) -> str | None:
    """The email of the datasite's account with ``verify_key``; None if it has none."""
    users = server.services.user.stash
    try:
        return users.get_by_verify_key(credentials=users.root_verify_key, verify_key=verify_key).unwrap().email
    except Exception:  # PySyft raises its own error types for an unknown key
        return None


def privacy_status(context) -> dict:
    """This datasite's privacy policy and budget, as its data owner's guard reports them."""
    from fl_syft.owner.guard import ACTIVE

    return ACTIVE["guard"].status()


def secagg_router(server, guard: Guard):
    """``POST /api/v2/fl-syft/secagg``: the secure-aggregation steps, for a logged-in user.

    Several per round and site: PySyft's custom API endpoints take ~0.2 s of the site's CPU
    per call (they build clients and store each result), which would cost more than the rest
    of a round at 10 sites. The request is PySyft's own signed API call (``SignedSyftAPICall``,
    serialised by PySyft): the signature, the datasite, the caller's account and the request's
    age are checked before the guard sees it."""
    import syft as sy
    from fastapi import APIRouter, Request, Response
    from fastapi.concurrency import run_in_threadpool
    from syft.client.api import SignedSyftAPICall

    from fl_syft.owner.syft_patches import signed_message_only

    router = APIRouter()

    def answer(body: bytes) -> dict:
        try:
            signed = sy.deserialize(body, from_bytes=True)
            if not isinstance(signed, SignedSyftAPICall) or not signed.is_valid:
                return {"error": "not a validly signed request"}
            signed_message_only(signed)
            call = signed.message
            if call.server_uid != server.id or call.path != SECAGG_PATH:
                return {"error": "a request for another datasite or path"}
            sent = call.kwargs.get("sent")
            if type(sent) not in (int, float) or not abs(time.time() - sent) <= FRESH_SECONDS:  # NaN fails too
                return {"error": "a stale request (check the clocks)"}
            if account_email(server, signed.credentials) is None:
                return {"error": "unknown account or malformed request"}
        except Exception:  # not PySyft at all
            return {"error": "unknown account or malformed request"}
        try:
            return {"result": guard.secagg_steps(call.kwargs["steps"])}
        except Refused as e:
            return {"error": str(Refusal(guard.site, "secure aggregation", str(e)))}

    async def secagg(request):
        reply = await run_in_threadpool(answer, await request.body())
        return Response(sy.serialize(reply, to_bytes=True), media_type="application/octet-stream")

    # Real classes, not this module's postponed (string) annotations: FastAPI reads them to know
    # that ``request`` is the request, not a query parameter.
    secagg.__annotations__ = {"request": Request, "return": Response}
    router.add_api_route(SECAGG_ROUTE, secagg, methods=["POST"])
    return router


def publish_status(root_client) -> None:
    """(Re)register :func:`privacy_status` as the API endpoint ``fl_syft.privacy`` (any logged-in user)."""
    import syft as sy

    with contextlib.redirect_stdout(io.StringIO()):
        if any(e.path == STATUS_PATH for e in root_client.custom_api.get_all()):  # a kept state's: afresh
            root_client.custom_api.delete(endpoint_path=STATUS_PATH)
        root_client.custom_api.add(endpoint=sy.api_endpoint(path=STATUS_PATH, description=(
            "The data owner's privacy policy for this site and the budget its ledger has spent."))(privacy_status))


def install(guard: Guard, data: Mapping[str, dict], mock: np.ndarray, mock_data: Mapping[str, dict],
            email_of: Callable[[object], str], vet: Callable[[object], object]) -> None:
    """Make ``guard`` the only thing PySyft 0.9.5 runs in this process for a request's call.

    The request's code is vetted again on every call (``vet(code) -> Decision``: fingerprint,
    policies, inputs, as on approval), then the owner's own installed function runs through
    :meth:`Guard.call` on ``data`` (the features of the site's own copy of the private rows) or,
    when PySyft hands in the synthetic ``mock`` (its second run of each call), on the mock's
    ``mock_data``, uncharged.
    Nothing of the request is executed. ``email_of(credentials)`` names the caller."""
    from syft.types.errors import SyftException

    from fl_syft.owner.syft_patches import route_execution

    def run(code_item, kwargs: dict, context) -> object:
        function = code_item.service_func_name
        decision = vet(code_item)
        if not decision.approve:
            raise SyftException(public_message=str(Refusal(guard.site, function, decision.reason)))
        given = kwargs.get("data")
        on_mock = type(given) is np.ndarray and given.shape == mock.shape and np.array_equal(given, mock)
        try:
            return guard.call(function, mock_data if on_mock else data, kwargs.get("global_params"),
                              kwargs.get("config"), email_of(context.credentials), on_private_rows=not on_mock)
        except Refused as e:
            raise SyftException(public_message=str(Refusal(guard.site, function, str(e)))) from None

    route_execution(run)
    ACTIVE["guard"] = guard
