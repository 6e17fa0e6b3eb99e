"""What anyone who reaches a site's port can make it spend before logging in: bounded.

The datasite's HTTP app (``datasite._run_uvicorn``) serves only the routes fl-syft uses
(:data:`SERVED`: no ``/docs``, ``/redoc``, ``/openapi.json``, no signup, no password reset, no
blob streams). In front of it, :class:`Exposure` reads every request body itself before the app
sees it: a declared ``Content-Length`` over the route's cap is refused unread (413), a streamed
(chunked) body is counted as it arrives and refused once over, and all bodies being read or served
at once stay within :data:`IN_FLIGHT_CAP` (503 past it). Login attempts take a token from a bucket
per client address and one for the site (429 without a password hash when either is empty); a
successful login gives its tokens back, so only wrong passwords are limited. PySyft's API
description (``GET /api``) is limited alike, except for keys that logged in from the same address.
What PySyft decodes of a body before it knows the caller is in :mod:`owner.prelogin`.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import math
import time
import urllib.parse

from fl_syft.common.protocol import SECAGG_ROUTE

log = logging.getLogger("fl_syft.datasite")

PREFIX = "/api/v2"
LOGIN, API = f"{PREFIX}/login", f"{PREFIX}/api"
SERVED = {  # path -> method: what the fl-syft client (PySyft's, and the secure-aggregation steps) uses
    f"{PREFIX}/": "GET", f"{PREFIX}/metadata": "GET", API: "GET", f"{PREFIX}/api_call": "POST",
    LOGIN: "POST", f"{PREFIX}{SECAGG_ROUTE}": "POST",
}
KiB, MiB = 1 << 10, 1 << 20
CAPS = {
    # The largest call fl-syft makes: a model with its momentum on the widest feature map, 2 x 10 x
    # 3970 float64 (~0.64 MB) in one action.set; the other calls are small. 4 MiB leaves room for
    # PySyft's framing and a wider map, and is what a site reads whole before knowing the caller.
    f"{PREFIX}/api_call": 4 * MiB,
    # One secure-aggregation step: keys, signatures and sealed shares, a few hundred bytes per peer.
    f"{PREFIX}{SECAGG_ROUTE}": 1 * MiB,
    LOGIN: 4 * KiB,  # an email and a password, as JSON
}
OTHER_CAP = 4 * KiB  # the other routes take no body
# Every body being read or served at once (PySyft's decoding holds ~3 copies of a body): 8 of the
# largest calls at once, ~100 MB of the site's memory at most, whoever sends them.
IN_FLIGHT_CAP = 32 * MiB
# Login attempts: each costs a bcrypt check (~0.25 s of a core). Per client address (an IPv6 /64):
# a burst of 10, then one every 6 s; the whole site: a burst of 30, then one a second (a quarter of
# a core at most, whatever the number of addresses). A successful login gives its tokens back.
LOGIN_LIMITS = ((10, 1 / 6), (30, 1.0))
# PySyft's API description (GET /api?verify_key=K) costs ~0.3 s of a core and 3 MB, for any K. Free
# for a key that logged in from this address (the client fetches it after login and after some
# calls); for any other, a burst of 5 per address then one every 10 s, a burst of 10 and one every
# 2 s for the site (~0.15 of a core).
API_LIMITS = ((5, 1 / 10), (10, 1 / 2))
MAX_ADDRESSES = 10_000  # addresses (and logged-in keys) remembered; the oldest is forgotten first
# uvicorn's default parser (httptools) keeps every header line a client sends: 200 MB of headers
# took 224 MB of memory, before any request reached the app. h11 refuses a head over 16 KiB.
HTTP = "h11"


class Bucket:
    """A token bucket: ``capacity`` tokens (full at first), refilled at ``rate`` a second."""

    def __init__(self, capacity: float, rate: float) -> None:
        self.capacity, self.rate, self.tokens, self.stamp = capacity, rate, capacity, time.monotonic()

    def level(self, now: float) -> float:
        self.tokens, self.stamp = min(self.capacity, self.tokens + (now - self.stamp) * self.rate), now
        return self.tokens

    def wait(self, now: float) -> float:
        """Seconds until a token is there."""
        return max(0.0, (1.0 - self.level(now)) / self.rate)


class Limiter:
    """Token buckets per client address and for the whole site. Used from the event loop only."""

    def __init__(self, per_address: tuple[float, float], overall: tuple[float, float],
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.per_address, self.max_addresses = per_address, max_addresses
        self.overall = Bucket(*overall)
        self.addresses: dict[str, Bucket] = {}

    def take(self, address: str) -> float:
        """0 if the attempt may go ahead (its tokens taken), else the seconds to wait."""
        now = time.monotonic()
        mine = self.addresses.pop(address, None) or Bucket(*self.per_address)
        self.addresses[address] = mine  # most recent last
        while len(self.addresses) > self.max_addresses:
            self.addresses.pop(next(iter(self.addresses)))
        wait = max(mine.wait(now), self.overall.wait(now))
        if wait == 0.0:
            mine.tokens -= 1
            self.overall.tokens -= 1
        return wait

    def give(self, address: str) -> None:
        """An attempt's tokens back."""
        now = time.monotonic()
        for bucket in (self.addresses.get(address), self.overall):
            if bucket is not None:
                bucket.tokens = min(bucket.capacity, bucket.level(now) + 1)


def client_key(scope: dict) -> str:
    """The client's address as the limiter counts it: an IPv4 address, or an IPv6 /64 (one host's)."""
    host = (scope.get("client") or ("unknown", 0))[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        mapped = address.ipv4_mapped
        return str(mapped) if mapped else str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class Summary:
    """One log line a minute at most for events anyone can cause (site.log is the owner's disk)."""

    def __init__(self, text: str, every: float = 60.0) -> None:
        self.text, self.every, self.count, self.last, self.stamp = text, every, 0, "", -every

    def add(self, last: str) -> None:
        self.count, self.last = self.count + 1, last
        now = time.monotonic()
        if now - self.stamp >= self.every:
            log.warning(self.text, self.count, self.last)
            self.count, self.stamp = 0, now


_LOGIN = contextvars.ContextVar("fl_syft_login")  # the login being served: [its key once it succeeded]


def login_succeeded(verify_key: str) -> None:
    """Called by :func:`owner.prelogin.on_login` when a login exchanged its password for a key."""
    attempt = _LOGIN.get(None)
    if attempt is not None:
        attempt.append(verify_key)


class Exposure:
    """ASGI middleware: body caps, the in-flight budget and the limiters (module docstring).
    Refusals, failed logins and failed requests are logged as :class:`Summary` lines."""

    def __init__(self, app, name: str, caps: dict[str, int] | None = None, other_cap: int = OTHER_CAP,
                 in_flight_cap: int = IN_FLIGHT_CAP, logins: Limiter | None = None,
                 api: Limiter | None = None) -> None:
        self.app, self.caps, self.other_cap = app, CAPS if caps is None else caps, other_cap
        self.in_flight_cap, self.in_flight = in_flight_cap, 0
        self.limiters = {LOGIN: logins or Limiter(*LOGIN_LIMITS), API: api or Limiter(*API_LIMITS)}
        self.logged_in: dict[tuple[str, str], None] = {}  # (address, verify key hex) of successful logins
        self.refused = Summary(f"{name}: refused %d requests in the last minute (last: %s)")
        self.failed_logins = Summary(f"{name}: %d failed login attempts in the last minute (last from %s)")
        self.failed = Summary(f"{name}: %d requests failed in the last minute (last: %s)")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan (no websocket route is served)
            return await self.app(scope, receive, send)
        path, address = scope["path"], client_key(scope)
        cap = self.caps.get(path, self.other_cap)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            return await self.refuse(send, 413, f"request body over {cap} bytes on this route", address)
        limited = path in self.limiters and not (path == API and (address, _verify_key(scope)) in self.logged_in)
        if limited:
            wait = self.limiters[path].take(address)
            if wait:
                return await self.refuse(send, 429, "too many attempts: retry later", address,
                                         [(b"retry-after", str(math.ceil(wait)).encode())])
        attempt, held, started, served = [], 0, [], False
        token = _LOGIN.set(attempt)
        try:
            chunks = []
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunk = message.get("body", b"")
                if held + len(chunk) > cap:
                    return await self.refuse(send, 413, f"request body over {cap} bytes on this route", address)
                if self.in_flight + len(chunk) > self.in_flight_cap:
                    return await self.refuse(send, 503, "the site is busy: retry later", address)
                held += len(chunk)
                self.in_flight += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break

            async def sending(message) -> None:
                started.append(True)
                await send(message)

            served = True
            await self.app(scope, _replay(b"".join(chunks), receive), sending)
        except Exception as e:  # no traceback per request in site.log: anyone can cause one
            self.failed.add(f"{type(e).__name__} on {path}")
            if not started:
                await answer(send, 500, "internal error")
        finally:
            self.in_flight -= held
            _LOGIN.reset(token)
            if path == LOGIN and served:
                self._logged_in(address, attempt)

    def _logged_in(self, address: str, attempt: list[str]) -> None:
        if not attempt:
            self.failed_logins.add(address)
            return
        self.limiters[LOGIN].give(address)
        self.logged_in.pop((address, attempt[0]), None)
        self.logged_in[(address, attempt[0])] = None  # most recent last
        while len(self.logged_in) > MAX_ADDRESSES:
            self.logged_in.pop(next(iter(self.logged_in)))

    async def refuse(self, send, status: int, reason: str, address: str, headers=()) -> None:
        self.refused.add(f"{status} {reason} on this route, from {address}")
        await answer(send, status, reason, headers)


def _verify_key(scope: dict) -> str:
    """The ``verify_key`` a GET /api asks about (hex, as PySyft's client sends it)."""
    values = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1")).get("verify_key", [""])
    return values[0].lower()


def _replay(body: bytes, receive):
    """A ``receive`` that gives the app the body already read, then the client's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


async def answer(send, status: int, reason: str, headers=()) -> None:
    """A plain-text answer that closes the connection (an unread body is never read)."""
    body = reason.encode() + b"\n"
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


def harden(app, server) -> None:
    """Serve only :data:`SERVED` (FastAPI's ``/docs``, ``/redoc``, ``/openapi.json`` and PySyft's
    other routes answer 404), behind :class:`Exposure`, with PySyft reading pre-login bodies as
    signed envelopes only (``owner.prelogin``). Call after every router is included."""
    from fl_syft.owner import prelogin

    app.router.routes = [r for r in app.router.routes
                         if SERVED.get(getattr(r, "path", None)) in getattr(r, "methods", ())]
    prelogin.signed_envelopes_only()
    prelogin.bounded_decoding()
    prelogin.on_login(server, login_succeeded)
    logging.getLogger("syft.server.routes").setLevel(logging.CRITICAL)  # a line per failed login: summarised here
    app.add_middleware(Exposure, name=server.name)
