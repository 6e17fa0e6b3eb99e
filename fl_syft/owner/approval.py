"""Auto-approval of code requests on a datasite (data owner side).

A request is approved only if its code is one of the vetted functions in ``fl_syft.vetted``
(every public function of every module there), compared by a fingerprint of the source
(the function's AST with decorators removed: formatting and comments do not matter,
everything else does), and its inputs are exactly this site's asset plus the function's
declared plain arguments.
Everything else is denied with a reason the data scientist can read. Every decision is
appended to an audit log (JSON lines).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from fl_syft import vetted
from fl_syft.common.fingerprint import fingerprint, fingerprint_of
from fl_syft.owner.audit import AuditLog

log = logging.getLogger("fl_syft.approval")


def vetted_functions() -> dict[str, Callable]:
    """name -> function, for every public function defined in a module of ``fl_syft.vetted``.
    Its first argument is the asset, the rest are plain dicts."""
    found: dict[str, Callable] = {}
    for info in pkgutil.iter_modules(vetted.__path__):
        module = importlib.import_module(f"{vetted.__name__}.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("_") and fn.__module__ == module.__name__:
                found[name] = fn
    return found


@dataclass(frozen=True)
class Vetted:
    """What the approver knows of one vetted function: where it lives, its fingerprint, its arguments."""

    name: str
    module: str
    fingerprint: str
    params: tuple[str, ...]  # the asset first, then the plain dict arguments

    @classmethod
    def of(cls, fn: Callable) -> Vetted:
        return cls(fn.__name__, fn.__module__, fingerprint_of(fn), tuple(inspect.signature(fn).parameters))


def allow_list() -> dict[str, Vetted]:
    """The data owner's own installed vetted functions, by name."""
    return {name: Vetted.of(fn) for name, fn in vetted_functions().items()}


@dataclass(frozen=True)
class Decision:
    approve: bool
    reason: str
    function: str
    fingerprint: str


def decide(func_name: str, raw_code: str, input_kwargs: dict, asset_id: str,
           allowed: dict[str, Vetted]) -> Decision:
    """Judge one code request (pure: no PySyft).

    ``input_kwargs``: argument name -> ("asset", action id) or ("plain", type name), as read
    from the request's input policy; ``asset_id``: this site's asset action id.
    """
    try:
        fp = fingerprint(raw_code)
    except (SyntaxError, ValueError) as e:
        return Decision(False, f"denied: not a single function definition ({e})", func_name, "")
    if func_name not in allowed:
        return Decision(False, f"denied: {func_name!r} is not on this site's allow-list "
                               f"({', '.join(sorted(allowed))})", func_name, fp)
    vetted = allowed[func_name]
    if fp != vetted.fingerprint:
        return Decision(False, f"denied: {func_name!r} differs from the vetted fl_syft version "
                               f"(submit {vetted.module}.{func_name} unchanged)", func_name, fp)
    params = vetted.params
    expected = {params[0]: ("asset", asset_id), **{p: ("plain", "dict") for p in params[1:]}}
    if input_kwargs != expected:
        return Decision(False, f"denied: inputs must be {params[0]}=<this site's asset> and "
                               f"{', '.join(params[1:])} as dicts; got {_describe(input_kwargs)}",
                        func_name, fp)
    return Decision(True, "approved: vetted function on this site's asset", func_name, fp)


def _describe(kwargs: dict) -> str:
    return ", ".join(f"{k}={kind}" for k, (kind, _) in sorted(kwargs.items())) or "no inputs"


def read_inputs(code) -> dict:
    """A UserCode's input policy as name -> ("asset", uid) | ("plain", type) | ("other", repr)."""
    rules: dict = {}
    for per_server in (code.input_policy_init_kwargs or {}).values():
        for name, rule in per_server.items():
            kind = type(rule).__name__
            if kind == "Matches":
                rules[name] = ("asset", str(rule.val))
            elif kind == "UserOwned":
                rules[name] = ("plain", getattr(rule.type, "__name__", str(rule.type)))
            else:
                rules[name] = ("other", kind)
    from syft.service.policy.policy import MixedInputPolicy

    if code.input_policy_type is not MixedInputPolicy:  # e.g. a custom policy class
        rules["<policy>"] = ("other", getattr(code.input_policy_type, "__name__", "custom"))
    return rules


class Approver:
    """Decides a datasite's pending requests as they arrive (runs in the site process).

    Listing pending requests through PySyft deserializes every request ever made, so
    each poll first asks the database for the number of requests (one COUNT, well under
    a millisecond) and lists them only when it changed: decisions within ``poll_seconds``
    without taxing the cores the sites compute on. ``count_requests`` returns that number.
    """

    def __init__(self, root_client, count_requests: Callable[[], int], site: str, audit: AuditLog,
                 poll_seconds: float = 0.1):
        self.client, self.count_requests, self.site, self.audit_log = root_client, count_requests, site, audit
        self.poll_seconds = poll_seconds
        self.allowed = allow_list()
        self.asset_id = str(root_client.datasets[0].assets[0].action_id)
        self._settled = -1  # request count when every request was last decided

    def run_forever(self) -> None:
        while True:
            try:
                self.poll_once()
            except Exception as e:  # keep approving after a transient failure
                log.error("%s: approver error: %s", self.site, e)
            time.sleep(self.poll_seconds)

    def poll_once(self) -> int:
        """Decide every pending request if any arrived since the last pass; return how many."""
        count = self.count_requests()
        if count == self._settled:
            return 0
        pending = self.client.requests.get_all_pending()
        for request in pending:
            self.handle(request)
        self._settled = count  # only after every decision: a failed pass is retried
        return len(pending)

    def handle(self, request) -> Decision:
        code = request.code
        decision = decide(code.service_func_name, code.raw_code, read_inputs(code), self.asset_id, self.allowed)
        with contextlib.redirect_stdout(io.StringIO()):  # PySyft prints a banner per decision
            if decision.approve:
                request.approve(disable_warnings=True)
            else:
                request.deny(reason=decision.reason)
        self.audit(request, decision)
        return decision

    def audit(self, request, decision: Decision) -> None:
        entry = {
            "event": "decision",
            "request_id": str(request.id),
            "requester": str(request.requesting_user_email or request.requesting_user_verify_key),
            "function": decision.function,
            "fingerprint": decision.fingerprint,
            "decision": "approved" if decision.approve else "denied",
            "reason": decision.reason,
        }
        self.audit_log.write(entry)
        log.info("%s: %s %s from %s", self.site, entry["decision"], decision.function, entry["requester"])
