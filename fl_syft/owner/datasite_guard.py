"""The guard inside a PySyft 0.9.5 datasite: made the only runner of a request's call
(:func:`install`), its privacy status published as an API endpoint (:func:`publish_status`),
and the owner's secure-aggregation route (:func:`secagg_router`). The guard itself
(``owner.guard``) knows nothing of PySyft."""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Callable, Mapping

import numpy as np

from fl_syft.common.protocol import SECAGG_PATH, SECAGG_ROUTE, STATUS_PATH, Refusal
from fl_syft.owner.guard import Guard, Refused

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
    from fl_syft.owner.datasite_guard import ACTIVE

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

    from fl_syft.owner.prelogin import read_signed_call
    from fl_syft.owner.syft_patches import signed_message_only

    router = APIRouter()

    def answer(body: bytes) -> dict:
        try:
            signed = read_signed_call(body)  # nothing of the body decoded but the envelope's bytes
            if signed is None or not signed.is_valid:
                return {"error": "not a validly signed request"}
            requester = account_email(server, signed.credentials)
            if requester is None:  # before its message is decoded
                return {"error": "unknown account or malformed request"}
            signed_message_only(signed)
            call = signed.message
            if call.server_uid != server.id or call.path != SECAGG_PATH:
                return {"error": "a request for another datasite or path"}
            sent = call.kwargs.get("sent")
            if type(sent) not in (int, float) or not abs(time.time() - sent) <= FRESH_SECONDS:  # NaN fails too
                return {"error": "a stale request (check the clocks)"}
        except Exception:  # not PySyft at all
            return {"error": "unknown account or malformed request"}
        try:
            return {"result": guard.secagg_steps(call.kwargs["steps"])}
        except Refused as e:  # the owner sees it too (audit, site.log, status): e.g. a stale peer card
            guard.record(uuid.uuid4().hex[:12], "secure aggregation", requester, "refused", str(e))
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
        given = kwargs.get("data")
        on_mock = type(given) is np.ndarray and given.shape == mock.shape and np.array_equal(given, mock)
        requester = email_of(context.credentials)
        try:
            decision = vet(code_item)
            if not decision.approve:
                if not on_mock:
                    guard.record(uuid.uuid4().hex[:12], function, requester, "refused", decision.reason)
                raise Refused(decision.reason)
            return guard.call(function, mock_data if on_mock else data, kwargs.get("global_params"),
                              kwargs.get("config"), requester, on_private_rows=not on_mock)
        except Refused as e:  # its cause: what tells PySyft's error log it is a refusal (syft_patches)
            raise SyftException(public_message=str(Refusal(guard.site, function, str(e)))) from e

    route_execution(run)
    ACTIVE["guard"] = guard
