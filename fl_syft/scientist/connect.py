"""Connect to datasites, get the vetted functions approved, call them (data scientist side).

Works with the launcher's connection file or with explicit addresses of datasites
anywhere (a PySyft 0.9.5 datasite on another machine is used the same way). Only what
the vetted functions return ever reaches this side.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fl_syft.common.errors import one_line
from fl_syft.common.fingerprint import fingerprint, fingerprint_of
from fl_syft.common.protocol import SECAGG_KEY, SECAGG_PATH, SECAGG_ROUTE, STATUS_PATH, Refusal
from fl_syft.scientist import transport
from fl_syft.scientist.addresses import ConnectError, Password, SiteAddress, password_for
from fl_syft.scientist.quiet import quiet
from fl_syft.scientist.rounds import SiteRefused

log = logging.getLogger("fl_syft.connect")

# Python 3.11's ``ast`` module is not thread-safe ("AST constructor recursion depth mismatch"):
# parsing source (our fingerprints, PySyft's syft_function) takes this lock.
_PARSING = threading.Lock()


class SyftSite:
    """One datasite as a federated site: ``call(function, ...)`` runs that approved vetted function there."""

    def __init__(self, address: SiteAddress, password: Password | None):
        self.address = address
        self.client = _login(address, password_for(address, password))
        self.name = self.client.name
        datasets = self.client.datasets.get_all()
        if not datasets:
            raise ConnectError(f"{self.name}: the datasite holds no dataset; restart the launcher")
        self.asset = datasets[0].assets[0]
        self._calls: dict[str, Callable] = {}  # approved UserCode by function name, bound by id
        self._uploaded: dict[str, object] = {}  # config (repr) -> its pointer on this datasite
        self._http = None  # requests.Session for the owner's secure-aggregation route

    def request_approval(self, fn: Callable, timeout: float = 60.0) -> None:
        """Submit the vetted ``fn`` (or reuse an earlier request) and wait for the owner's decision."""
        import syft as sy
        from syft.types.errors import SyftException

        with _PARSING:
            name, wanted = fn.__name__, fingerprint_of(fn)
        if self._request(name, wanted) is None:
            policy = sy.MixedInputPolicy(client=self.client, data=self.asset, global_params=dict, config=dict)
            try:
                with quiet(), _PARSING:
                    self.client.code.request_code_execution(sy.syft_function(input_policy=policy)(fn))
            except SyftException as e:
                if "already exists" not in one_line(e):
                    raise ConnectError(f"{self.name}: submitting {name} failed: {one_line(e)}") from None
                # Another run of ours submitted the same request meanwhile: wait for its decision.
        deadline = time.monotonic() + timeout
        while True:
            request = self._request(name, wanted)
            status = str(request.status).rsplit(".", 1)[-1] if request else "PENDING"
            if status == "APPROVED":
                self._calls[name] = _bind_user_code(self.client, request.code)
                return
            if status == "REJECTED":
                raise ConnectError(f"{self.name} denied {name}: {request.deny_reason}")
            if time.monotonic() > deadline:
                raise ConnectError(f"{self.name}: no decision on {name} within {timeout:.0f} s; "
                                        "is the data owner's approver running?")
            time.sleep(0.1)

    def _request(self, name: str, wanted: str):
        """Our request for function ``name`` with exactly the fingerprint ``wanted`` (not an
        older, different version of it)."""
        for request in reversed(self.client.requests.get_all()):
            code = request.code
            if code.service_func_name == name:
                with _PARSING:
                    if _fingerprint_or_none(code.raw_code) == wanted:
                        return request
        return None

    def privacy(self) -> dict:
        """The site's published privacy status: its owner's policy and what its ledger has spent
        (the owner's API endpoint ``fl_syft.privacy``, called directly: PySyft's client would queue
        it as a job, which a datasite without workers never runs)."""
        from syft.types.errors import SyftException

        try:
            with quiet():
                answer = self.client.api.services.api.call(STATUS_PATH)
        except SyftException as e:
            raise ConnectError(f"{self.name} publishes no privacy status ({one_line(e, 200)}): is it an fl-syft "
                               "datasite (fl-syft launch / serve) of this version?") from None
        except OSError as e:
            raise ConnectError(f"{self.name} at {_where(self.address)} is unreachable ({e.__class__.__name__}); "
                               "is the datasite still running?") from None
        return answer if isinstance(answer, dict) else answer.get()

    def secagg(self, steps: dict) -> dict:
        """This site's secure-aggregation steps (keys, shares, unmasking): a PySyft-signed request to
        the owner's route ``/api/v2/fl-syft/secagg``."""
        import requests
        import syft as sy
        from syft.client.api import SyftAPICall

        call = SyftAPICall(server_uid=self.client.id, path=SECAGG_PATH, args=[],
                           kwargs={"steps": steps, "sent": time.time()})
        body = sy.serialize(call.sign(self.client.credentials), to_bytes=True)
        try:
            if self._http is None:
                self._http = requests.Session()  # kept alive: several requests per round
            reply = self._http.post(f"{_where(self.address)}/api/v2{SECAGG_ROUTE}", data=body)  # transport timeout
            reply.raise_for_status()
            answer = sy.deserialize(reply.content, from_bytes=True)
        except requests.RequestException as e:
            raise ConnectError(f"{self.name} at {_where(self.address)}: secure aggregation failed "
                               f"({e.__class__.__name__}); is the datasite still running?") from None
        if "error" in answer:
            refusal = Refusal.find(answer["error"])
            if refusal is not None and refusal.site == self.name:
                raise SiteRefused(refusal.line)
            raise ConnectError(f"{self.name}: secure aggregation refused the request: {answer['error']}")
        return answer["result"]

    def call(self, name: str, global_params: dict, config: dict) -> dict:
        """The approved vetted function ``name`` on this site's private shard."""
        from syft.types.errors import SyftException

        if name not in self._calls:
            raise ConnectError(f"{self.name}: {name} is not approved yet (call request_approval first)")
        try:
            with quiet():
                try:
                    # A securely aggregated call's config changes every round: sent as is.
                    sent = self._pointer(config) if SECAGG_KEY in config else self._upload_once(config)
                    pointer = self._calls[name](data=self.asset, global_params=self._pointer(global_params),
                                                config=sent)
                    return self._result(pointer)
                except Exception:
                    self._uploaded.clear()  # a retry uploads the config again, in case the site lost it
                    raise
        except SyftException as e:
            refusal = Refusal.find(str(e))
            if refusal is not None and refusal.site == self.name:  # the owner's guard: asking again changes nothing
                raise SiteRefused(refusal.line) from None
            raise ConnectError(f"{self.name}: {name} failed: {one_line(e, 400)}") from None
        except OSError as e:
            raise ConnectError(f"{self.name} at {self.address.url}:{self.address.port} is unreachable "
                                    f"({e.__class__.__name__}); is the datasite still running?") from None

    def _upload_once(self, config: dict):
        """A pointer to ``config`` on this datasite: the config is the same every round, so send it once."""
        key = repr(sorted(config.items()))
        if key not in self._uploaded:
            self._uploaded[key] = self._pointer(config)
        return self._uploaded[key]

    def _pointer(self, value: object):
        """``value`` stored on this datasite, in one request. (PySyft's own upload of a call's
        arguments first asks the site's metadata, each time, whether the value is large enough for
        blob storage; the metadata was read at login. A large value still goes PySyft's way.)"""
        from syft.service.action.action_object import ActionObject, convert_to_pointers
        from syft.service.blob_storage.util import can_upload_to_blob_storage

        api = self.client.api
        if can_upload_to_blob_storage(value, self.client.metadata).unwrap():
            return convert_to_pointers(api, api.server_uid, kwargs={"value": value})[1]["value"]
        stored = ActionObject.from_obj(syft_action_data=value, syft_client_verify_key=api.signing_key.verify_key,
                                       syft_server_location=api.server_uid)
        stored.syft_server_uid, stored.syft_action_saved_to_blob_store = api.server_uid, False
        return api.services.action.set(stored)

    def _result(self, pointer) -> object:
        """What a call's result ``pointer`` holds, in one request (``pointer.get()`` also asks for
        the storage permission, only to print a warning)."""
        from syft.service.action.action_object import ActionObject
        from syft.types.errors import SyftException
        from syft.types.result import Err

        result = self.client.api.services.action.get(pointer.id)
        if not isinstance(result, ActionObject):
            raise SyftException(public_message=str(result))
        if issubclass(result.syft_action_data_type, Err):
            raise SyftException(public_message=str(result.syft_action_data.err()))
        return result.syft_action_data


def _bind_user_code(client, code):
    """A callable for exactly this UserCode. ``client.code.<name>`` keeps one function per
    name, so after an earlier (denied) function of the same name it could call the wrong one."""
    from syft.client.api import generate_remote_function

    api = client.api
    # ``global_params`` and ``config`` go as pointers (see SyftSite._pointer): the client-side type
    # check must not ask for a plain dict; the datasite's input policy still checks what they hold.
    params = [p.replace(annotation=inspect.Parameter.empty) if p.name in ("global_params", "config") else p
              for p in code.signature.parameters.values()]
    signature = code.signature.replace(parameters=params)
    return generate_remote_function(api, api.server_uid, signature, "code.call", api.make_call,
                                    pre_kwargs={"uid": code.id}, warning=None,
                                    communication_protocol=api.communication_protocol)


def _fingerprint_or_none(source: str) -> str | None:
    try:
        return fingerprint(source)
    except (SyntaxError, ValueError):
        return None


def _login(address: SiteAddress, password: Password):
    import requests
    import syft as sy
    from syft.types.errors import SyftException

    where = _where(address)
    if address.url.startswith("https://"):
        if not address.fingerprint:
            raise ConnectError(f"{address.label} at {where}: no certificate fingerprint to pin: use its invite")
        transport.pin(address.url.removeprefix("https://"), address.port, address.fingerprint)
    try:
        with quiet():
            client = sy.login(url=address.url, port=address.port, email=address.email, password=password.value)
    except requests.exceptions.SSLError as e:
        seen = transport.mismatch(e)
        if seen:
            raise ConnectError(f"{address.label} at {where} presents a TLS certificate with SHA-256 {seen[:16]}..., "
                               f"not the {address.fingerprint[:16]}... its invite pins: it is not that site, or the "
                               "site was started fresh (ask its owner for a new invite); nothing was sent") from None
        raise ConnectError(f"{address.label} at {where}: TLS failed ({one_line(e, 200)}): is it an HTTPS "
                           "site?") from None
    except requests.exceptions.ConnectionError:
        hint = ("ask its owner whether the site is running and the invite is its latest" if address.invite else
                "is the datasite running (python launch_datasites.py) and the URL/port right? (a site started "
                "with fl-syft serve speaks HTTPS only: use its invite, --invite FILE)")
        raise ConnectError(f"cannot reach {address.label} at {where}: {hint}") from None
    except AttributeError as e:  # how PySyft's login fails on an HTTP error status (it reads e.public_message)
        if "code 429" not in str(e.__context__):
            raise
        raise ConnectError(f"login to {address.label} at {where}: too many failed login attempts from this "
                           "address; wait a minute and retry with the right password") from None
    except SyftException as e:
        message = one_line(e, 400)
        if any(word in message.lower() for word in ("password", "credentials", "email", "item not found")):
            raise ConnectError(f"login to {address.label} at {where} failed for {address.email}: wrong email or "
                               f"password: {password.hint()}") from None
        raise ConnectError(f"login to {address.label} at {where} failed: {message}") from None
    if address.name and client.name != address.name:
        raise ConnectError(f"{where} is datasite {client.name!r}, not {address.name!r}: check the port")
    return client


def connect(addresses: list[SiteAddress], password: Password | None, functions: tuple[Callable, ...] = (),
            approval_timeout: float = 60.0) -> list[SyftSite]:
    """Log into every site (all reachable, each a different server, before anything is
    submitted), then get each of the vetted ``functions`` approved on each (:func:`approve`).
    Sites are contacted concurrently; an error names the first failing site in the order given."""
    sites = _each_site(lambda address: SyftSite(address, password), addresses)
    seen: dict[str, SyftSite] = {}
    for site in sites:
        first = seen.setdefault(str(site.client.id), site)
        if first is not site:
            raise ConnectError(f"{_where(first.address)} and {_where(site.address)} are the same datasite "
                               f"({site.name}): give each datasite once")
    approve(sites, functions, approval_timeout)
    return sites


def approve(sites: list[SyftSite], functions: tuple[Callable, ...], approval_timeout: float = 60.0) -> None:
    """Get each of the vetted ``functions`` approved on each site (concurrently)."""
    def each(site: SyftSite) -> SyftSite:
        for fn in functions:
            site.request_approval(fn, approval_timeout)
            log.info("%s: %s approved", site.name, fn.__name__)
        return site

    _each_site(each, sites)


def _each_site(step: Callable, items: list) -> list:
    """``step(item)`` for every item at once (a datasite answers slowly: logins alone take ~1.5 s);
    the results in order, or the first item's error in that order."""
    if len(items) < 2:
        return [step(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(len(items), 16)) as pool:
        futures = [pool.submit(step, item) for item in items]
        return [future.result() for future in futures]


def _where(address: SiteAddress) -> str:
    return f"{address.url}:{address.port}"
