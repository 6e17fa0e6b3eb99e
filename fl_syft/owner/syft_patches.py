"""Every patch the site makes to PySyft 0.9.5, in one place: what it replaces and why.

Each one sits on the path between the data scientist and the private rows, so each says what
PySyft did, what it does instead, and which test shows PySyft's own permission checks still
hold with it. :func:`before_server` runs before the Datasite object exists (PySyft loads the
policy code of approved requests while it starts); the rest once the site is built.

- :func:`typing_aliases_only` wraps ``recursive_primitives.deserialize_generic_alias``, which calls any
  function a request body names, before the caller is known (test_hostile_requests).
- :func:`never_load_user_policies` replaces ``policy.execute_policy_code``, which ``exec()``s a
  request's custom policy class (test_hostile_requests).
- :func:`route_execution` replaces ``action_service.execute_byte_code``, which ``exec()``s a
  request's parsed code (test_hostile_requests).
- :func:`scientist_api` wraps ``Server.handle_api_call_with_unsigned_result``: the message is only
  what the signature covers (:func:`signed_message_only`), decoded only for an account's key, and
  the services a scientist's role reaches are cut to what the fl-syft client uses (test_hostile_requests).

What PySyft reads of a request before login is patched in ``owner.prelogin`` (test_exposure).
- :func:`keep_decoded_arrays` wraps ``json_serde._deserialize_from_json_bytes``: the shard was
  decoded three times per call (test_datasite).
- :func:`read_assets_from_memory` wraps the action stash's ``get`` for root reads of assets (test_datasite).
- :func:`flat_call_cost` replaces ``UserCode.get_output_history`` and ``OutputPolicyExecuteCount.is_valid``:
  a call's cost grew with every earlier call (test_datasite).
- :func:`quiet_refusals` wraps ``SyftError.from_exception``, which printed a traceback to the site's
  log for each call the owner's guard refused (test_owner_status).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fl_syft.common.features import MAPS as FEATURE_MAPS
from fl_syft.common.files import write_json
from fl_syft.common.protocol import param_shapes

log = logging.getLogger("fl_syft.datasite")


def before_server() -> None:
    """The patches that must be in place before PySyft builds (and starts) the datasite."""
    never_load_user_policies()
    typing_aliases_only()


def typing_aliases_only() -> None:
    """A request body can no longer name a function for the deserialiser to call.

    PySyft 0.9.5 rebuilds a typing alias (``List[int]``) by looking up whatever ``module.attr`` the
    body names and calling it with the body's other fields as keyword arguments
    (``recursive_primitives.deserialize_generic_alias``), for any body, before the caller is
    known: ``subprocess.run(args=..., shell=True)`` from an unauthenticated request. Here only
    ``typing``'s own aliases, with exactly the fields PySyft writes, are rebuilt."""
    from syft.serde import recursive_primitives
    from syft.serde.deserialize import _deserialize
    from syft.types.syft_object_registry import SyftObjectRegistry

    original = recursive_primitives.deserialize_generic_alias
    fields = {"path", "__origin__", "__args__", "_paramspec_tvars"}

    def typing_only(type_blob: bytes) -> type:
        doc = _deserialize(type_blob, from_bytes=True)
        path = doc.get("path") if type(doc) is dict else None
        if type(path) is not str or not path.startswith("typing.") or path.count(".") != 1 or not set(doc) <= fields:
            raise ValueError("refused: a type alias that is not one of typing's")
        return original(type_blob)

    for versions in SyftObjectRegistry.__object_serialization_registry__.values():
        for version, entry in versions.items():
            if entry[2] is original:
                versions[version] = (*entry[:2], typing_only, *entry[3:])


def never_load_user_policies() -> None:
    """No custom policy class is ever compiled into this process.

    PySyft 0.9.5 ``exec()``s a ``UserPolicy``'s source when it loads it (``execute_policy_code``:
    at a call, and at start-up for every approved request). The approver never approves one;
    this makes loading one fail whatever is in the database."""
    from syft.service.code import user_code
    from syft.service.policy import policy
    from syft.types.errors import SyftException

    def refuse(user_policy, *args, **kwargs):
        raise SyftException(public_message="custom policies are not accepted on this site")

    # ``init_policy`` (imported by name into user_code) loads through ``policy.load_policy_code``.
    policy.execute_policy_code = policy.load_policy_code = user_code.load_policy_code = refuse


def route_execution(run: Callable[[object, dict, object], object]) -> None:
    """PySyft's ``execute_byte_code(code, kwargs, context)`` ``exec()``s a request's
    ``parsed_code``, source the scientist controls and no fingerprint covers. Replaced by ``run``
    (the one :func:`owner.datasite_guard.install` builds), which returns the result and never executes the request."""
    from syft.service.action import action_service
    from syft.service.code.user_code import UserCodeExecutionOutput

    def execute(code_item, kwargs: dict, context):
        result = run(code_item, kwargs, context)
        return UserCodeExecutionOutput(user_code_id=code_item.id, stdout="", stderr="", result=result)

    action_service.execute_byte_code = execute


def quiet_refusals(refused: type[BaseException]) -> None:
    """No traceback in the site's log for a call the owner's guard refused.

    PySyft 0.9.5 prints "Error: ..." and a traceback (``SyftError.from_exception``) for every
    failed call of an account below data owner. A refusal is the site working: the guard logs it
    as one line. An error caused by a ``refused`` (the guard's own exception type, which nothing a
    caller sends can raise) gets PySyft's answer without the print; every other error keeps it."""
    from syft.service.response import SyftError
    from syft.types.errors import SyftException

    original = SyftError.from_exception.__func__

    def from_exception(cls, context, exc: Exception, include_traceback: bool = False):
        cause = exc
        while cause is not None and not isinstance(cause, refused):
            cause = cause.__cause__
        if cause is None or include_traceback or not isinstance(exc, SyftException):
            return original(cls, context, exc, include_traceback)
        return cls(message=exc.get_message(context), tb=None)  # PySyft's answer, as it builds it

    SyftError.from_exception = classmethod(from_exception)


# What a data scientist's account may call on this site: the fl-syft client's whole use of PySyft.
SCIENTIST_PATHS = frozenset({
    "api.call", "action.get", "action.get_mock", "action.get_pointer", "action.has_storage_permission",
    "action.is_resolved", "action.exists", "action.set", "code.call", "code.get_all", "code.get_by_id",
    "code.get_all_for_user", "code.request_code_execution", "code_status.get_by_uid", "dataset.get_all",
    "dataset.get_by_id", "dataset.get_by_action_id", "dataset.search", "metadata", "metadata.get_metadata", "queue",
    "request.get_all",
    "request.get_by_uid", "request.get_all_info", "user.get_current_user",
    "notifications.get_all_unread", "notifications.resolve_object", "migration._get_object",
})
STORING = frozenset({"action.set", "code.request_code_execution"})  # paths whose bodies the site keeps


def _largest_answer() -> int:
    """Bytes PySyft keeps of a vetted function's call at most: the model and its momentum on the
    widest feature map, in float64, twice (it keeps the mock run's answer too), plus its framing."""
    width = max(fmap.width for fmap in FEATURE_MAPS.values())
    return 2 * 8 * sum(math.prod(shape) for shape in param_shapes(width).values()) + (64 << 10)


KEPT_PER_CALL = {"code.call": _largest_answer(), "api.call": 4 << 10}  # what PySyft keeps of a call's result


class ScientistQuota:
    """Bytes each non-admin account has had stored on this site (``quota.json``, owner-only)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit, self.lock = Path(path), int(limit), threading.Lock()
        self.used: dict[str, int] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def take(self, account: str, size: int) -> bool:
        with self.lock:
            if self.used.get(account, 0) + size > self.limit:
                return False
            self.used[account] = self.used.get(account, 0) + size
            write_json(self.path, self.used)  # atomic: a site killed mid-write still restarts
            return True


def signed_message_only(signed) -> None:
    """What a signed call asks is what its signature covers, nothing else.

    PySyft's ``SignedSyftAPICall.message`` returns ``cached_deseralized_message`` when it is set,
    while ``is_valid`` checks the signature over ``serialized_message`` only; its decoder takes
    any field a body carries. So any signed bytes (the site signs every answer with its root key)
    plus a call of one's own in that field ran as root. The field is dropped here, on every
    signed call the site receives, before anything reads ``message``; the message is then decoded
    from the signed bytes and must be an API call."""
    from syft.client.api import SyftAPICall
    from syft.types.errors import SyftException

    signed.cached_deseralized_message = None
    if type(signed.message) is not SyftAPICall:
        raise SyftException(public_message="a signed call must carry an API call")


def scientist_api(server, quota: ScientistQuota, endpoints: frozenset[str]) -> None:
    """Every API call of an account below data owner passes here first: only the paths the
    fl-syft client uses (:data:`SCIENTIST_PATHS`), blocking only (no queued jobs), custom API
    endpoints only the owner's own (``endpoints``), and whatever it makes the site store (its
    uploads and requests, and what PySyft keeps of each call) within ``quota``. Calls that are not
    signed, or carry more than their signature covers (:func:`signed_message_only`), are refused
    for everyone, and a key that is no account is refused before its message is decoded (what it
    may send is ``owner.prelogin``'s envelope). Everything else is refused in one line, before
    PySyft looks at it."""
    from syft.client.api import SignedSyftAPICall
    from syft.service.response import SyftError
    from syft.service.user.user_roles import ServiceRole
    from syft.types.errors import SyftException

    from fl_syft.owner.exposure import Summary

    handle = server.handle_api_call_with_unsigned_result

    strangers = Summary(f"{server.name}: refused %d calls without an account in the last minute (last: %s)")

    def checked(api_call, *args, **kwargs):
        role = None
        try:
            if type(api_call) is not SignedSyftAPICall:
                raise SyftException(public_message="only signed calls are served")
            if api_call.is_valid:  # else PySyft refuses it itself, before it reads the message
                role = server.get_role_for_credentials(credentials=api_call.credentials)
                if role is ServiceRole.GUEST:  # PySyft treats any unknown key as a guest
                    raise SyftException(public_message="log in with an account of this site")
                signed_message_only(api_call)  # decoded only now: the caller is an account (owner.prelogin)
                _admit(api_call, role)
        except SyftException as e:  # answered like any failed call: the client raises it as one line
            if role in (None, ServiceRole.GUEST):  # anyone can send these: one line a minute in site.log
                strangers.add(e.public_message)
            else:
                log.warning("%s: refused a call: %s", server.name, e.public_message)
            return SyftError(message=e.public_message)
        try:
            return handle(api_call, *args, **kwargs)
        except SyftException as e:  # PySyft's own refusals (a role without access) are answers, not HTTP 500s
            return SyftError(message=e.public_message)

    def _admit(api_call, role) -> None:
        if role.value < ServiceRole.DATA_OWNER.value:
            message = api_call.message
            path = message.path
            if path not in SCIENTIST_PATHS:
                raise SyftException(public_message=f"{path} is not open to data scientists on this site")
            if path not in ("metadata", "queue") and not message.blocking:
                raise SyftException(public_message="only blocking calls are served to data scientists on this site")
            if path == "api.call" and message.kwargs.get("path", (message.args or [None])[0]) not in endpoints:
                raise SyftException(public_message="only this site's own endpoints can be called")
            if path == "code.call" and message.kwargs.get("result_id") is not None:  # PySyft would write there
                raise SyftException(public_message="a call's result is stored where the site chooses (no result_id)")
            kept = len(api_call.serialized_message) if path in STORING else KEPT_PER_CALL.get(path, 0)
            if kept and not quota.take(str(api_call.credentials), kept):
                raise SyftException(public_message=f"this account's storage quota on the site ({quota.limit >> 20} "
                                                   "MiB) is used up: ask the data owner")

    server.handle_api_call_with_unsigned_result = checked


class DecodedArrayCache:
    """Decode a large array stored in the site's database once, not on every read.

    PySyft 0.9.5 reads a call's asset from its database row three times per call (argument
    flattening, input-policy check, kwargs filtering), each time base64-decoding and
    deserializing the whole shard: ~0.2 s of a core per call for 28,000 rows. The stored text
    is compared in full (a memcmp, ~3 ms) so a changed row is decoded afresh; the shared
    array is read-only, so no call can alter what the next one sees.
    """

    def __init__(self, decode: Callable[[str], object], min_chars: int = 1 << 20, capacity: int = 4) -> None:
        self.decode, self.min_chars, self.capacity = decode, min_chars, capacity  # small text decodes fast
        self.entries: list[tuple[str, np.ndarray]] = []  # most recent first
        self.lock = threading.Lock()  # uvicorn serves calls from several threads

    def __call__(self, text: str) -> object:
        if len(text) < self.min_chars:
            return self.decode(text)
        with self.lock:
            for i, (seen, array) in enumerate(self.entries):
                if seen == text:  # str == checks the length first, then one memcmp
                    self.entries.insert(0, self.entries.pop(i))
                    return array
        value = self.decode(text)
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
            with self.lock:
                self.entries = [(text, value), *self.entries][: self.capacity]
        return value


class LazyHistory:
    """An execution history loaded only if someone looks at it."""

    def __init__(self, load: Callable[[], list]):
        self._load, self._items = load, None

    def _all(self) -> list:
        if self._items is None:
            self._items = self._load()
        return self._items

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, index):
        return self._all()[index]


def flat_call_cost() -> None:
    """Keep the cost of a call flat however many calls came before.

    PySyft 0.9.5 loads an approved function's whole execution history on every call: once in
    ``UserCodeService._call`` (read only when the output policy refuses, to return a cached
    output) and once to count executions for ``OutputPolicyExecuteCount.is_valid``, whose
    answer it then ignores (upstream issue #9391). Round time grew ~2x over 240 rounds. Here the
    history loads only when read, and ``is_valid`` answers what PySyft does with it anyway. The
    site's own controls (approver, guard, privacy ledger) do not use either.
    """
    from syft.service.code.user_code import UserCode
    from syft.service.policy.policy import OutputPolicyExecuteCount
    from syft.types.result import Ok

    load = UserCode.get_output_history

    def lazy_history(self, context):
        return Ok(LazyHistory(lambda: load(self, context).unwrap()))

    UserCode.get_output_history = lazy_history
    OutputPolicyExecuteCount.is_valid = lambda self, context=None: True


class AssetReads:
    """The site's assets, as PySyft reads them for itself, from memory after the first read.

    PySyft 0.9.5 reads a call's asset three times per call (argument flattening, input-policy
    check, kwargs filtering), each time as root: a ~30 MB row fetched from the database and
    parsed, ~60 ms of a core per call. Only root reads of the listed objects are served here
    (anyone else's read goes to the database and its permission checks), each as a fresh
    shallow copy, since PySyft sets attributes on what it reads; the arrays themselves are
    read-only (:class:`DecodedArrayCache`). A write to a listed object through the stash forgets it.
    """

    WRITES = ("set", "update", "upsert", "delete_by_uid", "set_or_update")

    def __init__(self, stash, root_key, uids: set) -> None:
        self.stash, self.root_key, self.uids = stash, root_key, set(uids)
        self.read = stash.get
        self.held: dict = {}
        self.lock = threading.Lock()

    def install(self) -> None:
        self.stash.get = self.get
        for name in self.WRITES:
            setattr(self.stash, name, self._forgetting(getattr(self.stash, name)))

    def get(self, uid, credentials, has_permission: bool = False):
        from syft.types.result import Ok

        key = uid.id
        if key not in self.uids or credentials != self.root_key:
            return self.read(uid=uid, credentials=credentials, has_permission=has_permission)
        with self.lock:
            held = self.held.get(key)
        if held is None:
            held = self.read(uid=uid, credentials=credentials, has_permission=has_permission).unwrap()
            with self.lock:
                self.held[key] = held
        return Ok(_shallow(held))

    def _forgetting(self, write):
        def forget_then_write(*args, **kwargs):
            for value in (*args, *kwargs.values()):
                key = getattr(value, "id", value)
                key = getattr(key, "id", key)  # a LineageID's UID
                with self.lock:
                    self.held.pop(key, None)
            return write(*args, **kwargs)

        return forget_then_write


def _shallow(obj):
    """A copy of ``obj`` (an ActionObject or TwinObject) whose attributes can be set without
    touching ``obj``; the data inside is shared. (``copy.copy``: pydantic's ``model_copy`` runs
    PySyft's attribute hooks, ~5 ms.)"""
    from syft.types.twin_object import TwinObject

    twin = copy.copy(obj)
    if isinstance(obj, TwinObject):
        twin.private_obj, twin.mock_obj = copy.copy(obj.private_obj), copy.copy(obj.mock_obj)
    return twin


def read_assets_from_memory(server) -> None:
    """Install :class:`AssetReads` for every asset of the site."""
    assets = [asset.action_id for dataset in server.root_client.datasets.get_all() for asset in dataset.assets]
    AssetReads(server.services.action.stash, server.verify_key, {uid.id for uid in assets}).install()


def keep_decoded_arrays() -> None:
    """Install :class:`DecodedArrayCache` in front of PySyft's JSON deserialiser."""
    from syft.serde import json_serde

    json_serde._deserialize_from_json_bytes = DecodedArrayCache(json_serde._deserialize_from_json_bytes)


