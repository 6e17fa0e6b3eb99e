"""Auto-approval of code requests on a datasite (data owner side).

Every field of a request and of its code is the scientist's, and approving a request applies
every change in it. So a request is approved only if it holds exactly what a vetted request
holds and nothing else: one change, of PySyft's code-status kind, that approves the request's
own code and nothing more; code whose source has the fingerprint of one of the vetted
functions in ``fl_syft.vetted`` (the function's AST, decorators removed: formatting and
comments do not matter, everything else does); PySyft's own input policy with exactly this
site's asset and the function's plain dict arguments; PySyft's default output policy with its
default arguments; no nested code, no datasite handle, the default worker pool. Everything
else is denied with a reason in the audit log, and a request that is not exactly a code
request is rejected without running any of its changes (PySyft's deny *undoes* each change,
which for a hand-built change would apply it). What the approval enables is only that the
guard runs the owner's own installed copy of the function (``owner.datasite_guard.install``): no code
from a request ever runs here, whatever the request held.
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


def decide(func_name: str, raw_code: str, allowed: dict[str, Vetted]) -> Decision:
    """Judge a function's name and source against the allow-list (pure: no PySyft)."""
    try:
        fp = fingerprint(raw_code)
    except (SyntaxError, ValueError, RecursionError) as e:
        return Decision(False, f"denied: not a single function definition ({type(e).__name__})", func_name, "")
    if func_name not in allowed:
        return Decision(False, f"denied: {func_name!r} is not on this site's allow-list "
                               f"({', '.join(sorted(allowed))})", func_name, fp)
    vetted = allowed[func_name]
    if fp != vetted.fingerprint:
        return Decision(False, f"denied: {func_name!r} differs from the vetted fl_syft version "
                               f"(submit {vetted.module}.{func_name} unchanged)", func_name, fp)
    return Decision(True, "approved: vetted function on this site's asset", func_name, fp)


def _describe(kwargs: dict) -> str:
    return ", ".join(f"{k}={kind}" for k, (kind, _) in sorted(kwargs.items())) or "no inputs"


def vet_code(code, asset_id: str, server_uid: str, allowed: dict[str, Vetted]) -> Decision:
    """Judge a UserCode's fields (its policies, inputs and source), as on approval and again on
    every call: the exact PySyft classes a vetted request has, nothing custom, nothing extra."""
    from syft.service.code.user_code import UserCode
    from syft.service.policy.policy import Matches, MixedInputPolicy, OutputPolicyExecuteOnce, UserOwned

    name = code.service_func_name if type(code) is UserCode else "?"
    if type(code) is not UserCode or type(name) is not str or type(code.raw_code) is not str:
        return Decision(False, "denied: not a PySyft code object", str(name)[:80], "")
    decision = decide(name, code.raw_code, allowed)
    if not decision.approve:
        return decision
    params = allowed[name].params

    def denied(why: str) -> Decision:
        return Decision(False, f"denied: {why}", name, decision.fingerprint)

    if code.input_policy_type is not MixedInputPolicy:
        return denied("only PySyft's MixedInputPolicy is accepted (custom policies are never loaded here)")
    if code.output_policy_type is not OutputPolicyExecuteOnce or \
            set(code.output_policy_init_kwargs or {}) - {"id"}:
        return denied("only PySyft's default output policy with its default arguments is accepted")
    kwargs = code.input_policy_init_kwargs
    if type(kwargs) is not dict or len(kwargs) != 1:
        return denied("the input policy must name this site only")
    (identity, rules), = kwargs.items()
    if str(getattr(identity, "server_id", "")) != server_uid or type(rules) is not dict:
        return denied("the input policy must name this site only")
    expected = {params[0]: (Matches, asset_id), **{p: (UserOwned, dict) for p in params[1:]}}
    got = {k: (type(r), str(r.val) if type(r) is Matches else getattr(r, "type", None)) for k, r in rules.items()}
    if got != expected:
        return denied(f"inputs must be {params[0]}=<this site's asset> and {', '.join(params[1:])} as dicts; got "
                      f"{_describe({k: (t.__name__, v) for k, (t, v) in got.items()})}")
    if list(code.input_kwargs) != list(params) or list(code.signature.parameters) != list(params):
        return denied(f"the function's arguments must be {', '.join(params)}")
    if code.nested_codes or code.uses_datasite or code.worker_pool_name not in (None, "default-pool"):
        return denied("nested code, a datasite handle and custom worker pools are not accepted")
    return decision


def vet_request(request, asset_id: str, server_uid: str, allowed: dict[str, Vetted]) -> tuple[Decision, bool]:
    """(decision, shaped): ``shaped`` is whether the request is exactly one code-status change for
    its requester's own code, the only shape PySyft's deny may safely be run on."""
    from syft.service.code.user_code import UserCode, UserCodeStatus, UserCodeStatusCollection
    from syft.service.request.request import Request, UserCodeStatusChange

    def denied(why: str, name: str = "?") -> tuple[Decision, bool]:
        return Decision(False, f"denied: {why}", name, ""), False

    if type(request) is not Request or type(request.changes) is not list or len(request.changes) != 1:
        return denied("a request must hold exactly one change: approving the vetted code")
    change = request.changes[0]
    if type(change) is not UserCodeStatusChange or change.value is not UserCodeStatus.APPROVED \
            or change.match_type is not True or change.nested_solved:
        return denied("the request's change must be PySyft's code approval and nothing else")
    code_link, status_link = change.linked_user_code, change.linked_obj
    if code_link.object_type is not UserCode or status_link.object_type is not UserCodeStatusCollection \
            or str(code_link.server_uid) != server_uid or str(status_link.server_uid) != server_uid:
        return denied("the request's change must approve code on this site")
    code = change.code
    if type(code) is not UserCode or code.id != code_link.object_uid \
            or code.status_link.object_uid != status_link.object_uid \
            or code.user_verify_key != request.requesting_user_verify_key:
        return denied("the request must approve its requester's own code, through that code's own status")
    if code.input_policy_state != b"" or code.output_policy_state != b"":  # PySyft's own, set by calls
        return denied("a new request's policies carry no state", code.service_func_name)
    return vet_code(code, asset_id, server_uid, allowed), True


class Approver:
    """Decides a datasite's pending requests as they arrive (runs in the site process).

    Listing pending requests through PySyft deserializes every request ever made, so
    each poll first asks the database for the number of requests (one COUNT, well under
    a millisecond) and lists them only when it changed: decisions within ``poll_seconds``
    without taxing the cores the sites compute on. ``count_requests`` returns that number;
    ``reject(request)`` marks a request rejected without running any of its changes.
    """

    def __init__(self, root_client, count_requests: Callable[[], int], site: str, audit: AuditLog,
                 reject: Callable[[object], None], poll_seconds: float = 0.1):
        self.client, self.count_requests, self.site, self.audit_log = root_client, count_requests, site, audit
        self.reject, self.poll_seconds = reject, poll_seconds
        self.allowed = allow_list()
        self.asset_id = str(root_client.datasets[0].assets[0].action_id)
        self.server_uid = str(root_client.id)
        self._settled = -1  # request count when every request was last decided

    def vet(self, code) -> Decision:
        """The guard's check of a call's code (``owner.datasite_guard.install``)."""
        return vet_code(code, self.asset_id, self.server_uid, self.allowed)

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
        try:
            decision, shaped = vet_request(request, self.asset_id, self.server_uid, self.allowed)
        except Exception as e:  # a request PySyft itself cannot read: nothing of it is applied
            decision, shaped = Decision(False, f"denied: unreadable request ({type(e).__name__})", "?", ""), False
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # PySyft prints a banner per decision
                if decision.approve:
                    request.approve(disable_warnings=True)
                elif shaped:  # undoing its one change only denies the requester's own code
                    request.deny(reason=decision.reason)
                else:
                    self.reject(request)
        except Exception as e:  # one request PySyft cannot settle must not stall the others
            decision = Decision(False, f"denied: PySyft could not record the decision ({type(e).__name__})",
                                decision.function, decision.fingerprint)
        self.audit(request, decision)
        return decision

    def audit(self, request, decision: Decision) -> None:
        entry = {
            "event": "decision",
            "request_id": str(getattr(request, "id", "?")),
            "requester": str(getattr(request, "requesting_user_email", None)
                             or getattr(request, "requesting_user_verify_key", "?")),
            "function": decision.function,
            "fingerprint": decision.fingerprint,
            "decision": "approved" if decision.approve else "denied",
            "reason": decision.reason,
        }
        self.audit_log.write(entry)
        log.info("%s: %s %s from %s", self.site, entry["decision"], decision.function, entry["requester"])


def reject_unapplied(server) -> Callable[[object], None]:
    """``reject(request)`` for :class:`Approver`: record every change of ``request`` as not applied
    (PySyft then reports it rejected) without running any change's apply or undo."""
    from syft.service.request.request import ChangeStatus
    from syft.types.uid import UID

    stash = server.services.request.stash

    def reject(request) -> None:
        stored = stash.get_by_uid(credentials=server.verify_key, uid=request.id).unwrap()
        changes = list(stored.changes or [])
        stored.history = [*stored.history, *[ChangeStatus(change_id=c.id, applied=False) for c in changes],
                          *([] if changes else [ChangeStatus(change_id=UID(), applied=False)])]
        stash.update(server.verify_key, stored).unwrap()

    return reject
