"""Anyone who reaches a site's port, without an account, against a real datasite on loopback.

Each test sends what such a caller can send, with plain HTTP (requests, raw sockets), and
measures what it cost the site: the datasite process's peak memory (its high-water mark, reset
before the attack), its database rows, its log, its CPU time; the scientist still logs in after.
The middleware's and limiter's rules themselves are tested without a site at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import select
import socket
import sqlite3
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from syft_helpers import login, running_deployment

from fl_syft.owner import exposure
from fl_syft.owner.policy import owner_policy
from fl_syft.owner.prelogin import read_signed_call
from fl_syft.scientist.addresses import ConnectError, ds_password, read_connection
from fl_syft.scientist.connect import connect

MiB = 1 << 20


@pytest.fixture(scope="module")
def site(small_idx, tmp_path_factory):
    for deployment in running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("exposure"), sites=1,
                                         policy=owner_policy(epsilon=None, min_rows=10)):
        entry = json.loads(deployment.connection_file.read_text())["datasites"][0]
        status = json.loads((deployment.state / "site-1" / "status.json").read_text())
        deployment.base = f"{entry['url']}:{entry['port']}"
        deployment.port, deployment.pid, deployment.entry = entry["port"], status["pid"], entry
        yield deployment


@contextlib.contextmanager
def peak_memory(pid: int):
    """Yields a dict whose "growth" is, after the block, how far the process's resident memory
    rose above its level at the start at any moment during the block (MiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib(pid, "VmRSS")
    measured = {}
    yield measured
    measured["growth"] = (_status_kib(pid, "VmHWM") - before) / 1024


def _status_kib(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (USER_HZ 100)


def raw_request(port: int, head: bytes, chunks=()) -> tuple[bytes, int]:
    """Send ``head`` then ``chunks`` until the site answers or closes; (its answer, body bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        try:
            s.sendall(head)
            for chunk in chunks:
                if select.select([s], [], [], 0)[0]:
                    break
                s.sendall(chunk)
                sent += len(chunk)
            s.settimeout(60)
            return s.recv(65536), sent
        except (BrokenPipeError, ConnectionResetError):
            return b"", sent


def stranger_call(path: str, **kwargs) -> bytes:
    """A call signed by a fresh key that is no account of the site, as a body."""
    import syft as sy
    from syft.client.api import SyftAPICall
    from syft.server.credentials import SyftSigningKey
    from syft.types.uid import UID

    call = SyftAPICall(server_uid=UID(), path=path, args=[], kwargs=kwargs, blocking=True)
    return sy.serialize(call.sign(SyftSigningKey.generate()), to_bytes=True)


def answer_text(response: requests.Response) -> str:
    """What PySyft's route answered (the site's signed answer), as text."""
    import syft as sy

    return str(sy.deserialize(response.content, from_bytes=True).message.data)


def test_the_api_description_and_routes_fl_syft_does_not_use_are_not_served(site):
    for path in ("/docs", "/redoc", "/openapi.json", "/api/v2/docs", "/api/v2/openapi.json"):
        assert requests.get(site.base + path, timeout=60).status_code == 404, path
    for path in ("/forgot_password", "/reset_password", "/register", "/stream/x/y/"):
        assert requests.post(f"{site.base}/api/v2{path}", json={"email": "a@example.com"}, timeout=60).status_code \
            == 404, path
    assert requests.get(f"{site.base}/api/v2/metadata", timeout=60).json()["name"] == "site-1"


def test_bodies_over_the_cap_are_refused_without_being_read(site):
    """A declared 1 GB body (PySyft read it whole: +2 GB), and 256 MiB streamed without a length."""
    with peak_memory(site.pid) as declared:
        head = b"POST /api/v2/fl-syft/secagg HTTP/1.1\r\nHost: site\r\nContent-Length: 1000000000\r\n\r\n"
        answer, _ = raw_request(site.port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    with peak_memory(site.pid) as streamed:
        head = b"POST /api/v2/api_call HTTP/1.1\r\nHost: site\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n%s\r\n" % (MiB, b"\0" * MiB)
        answer, sent = raw_request(site.port, head, (chunk for _ in range(256)))
    assert answer.startswith(b"HTTP/1.1 413") or sent < 256 * MiB, (answer[:200], sent)
    assert declared["growth"] < 32 and streamed["growth"] < 32, (declared, streamed)  # the cap is 4 MiB
    assert requests.get(f"{site.base}/api/v2/metadata", timeout=60).status_code == 200


def expanding_envelope(copies: int, size: int) -> bytes:
    """A ~``size``-byte body whose signed bytes are ``copies`` capnp pointers to one ``size``-byte
    blob: PySyft (traversal limit off) joins them into copies x size bytes before any check."""
    import syft as sy
    from syft.serde.recursive import recursive_scheme
    from syft.server.credentials import SyftSigningKey

    msg = recursive_scheme.new_message(num_first_segment_words=size // 8 + 4 * copies + 4096)  # one segment
    msg.canonicalName, msg.version = "SignedSyftAPICall", 1
    names = msg.init("fieldsName", 3)
    for i, name in enumerate(("credentials", "signature", "serialized_message")):
        names[i] = name
    data = msg.init("fieldsData", 3)
    data.init(0, 1)[0] = sy.serialize(SyftSigningKey.generate().verify_key, to_bytes=True)
    data.init(1, 1)[0] = sy.serialize(b"s" * 64, to_bytes=True)
    chunks = data.init(2, copies)
    chunks[0] = b"\xaa" * size
    for j in range(1, copies):
        chunks[j] = b"\xbb" * 8
    words = bytearray(msg.to_bytes())
    assert struct.unpack_from("<I", words, 0)[0] == 0  # one segment: 8 bytes of segment table
    word = lambda i: struct.unpack_from("<Q", words, 8 + 8 * i)[0]  # noqa: E731
    first = next(i for i in range(len(words) // 8 - 1)  # the pointer to the big blob: a byte list of `size`
                 if word(i) & 3 == 1 and (word(i) >> 32) & 7 == 2 and word(i) >> 35 == size)
    offset = (word(first) >> 2) & 0x3FFFFFFF
    target = first + 1 + (offset - (1 << 30) if offset & (1 << 29) else offset)
    for j in range(1, copies):  # every other pointer of the list now points at the same blob
        struct.pack_into("<Q", words, 8 + 8 * (first + j),
                         (((target - first - j - 1) & 0x3FFFFFFF) << 2) | 1 | (2 << 32) | (size << 35))
    return bytes(words)


def test_a_body_that_expands_when_decoded_is_refused(site):
    body = expanding_envelope(copies=512, size=MiB)  # 1 MiB that PySyft decoded into 512 MiB
    assert len(body) < 2 * MiB
    with peak_memory(site.pid) as memory:
        reply = requests.post(f"{site.base}/api/v2/api_call", data=body, timeout=600)
    assert "only signed calls are served" in answer_text(reply)
    assert memory["growth"] < 32, memory


def test_a_strangers_call_is_never_decoded(site, tmp_path):
    """What PySyft decoded of a call before its signer was known: a typing alias that named a
    function to call (here ``subprocess.run``), an array whose dtype made it 1 GB, anywhere in
    the body: in the signed message of a key that is no account, in the cached message beside
    it, to PySyft's route and to the secure-aggregation route."""
    import typing

    import syft as sy
    from syft.client.api import SignedSyftAPICall, SyftAPICall
    from syft.serde.serialize import _serialize
    from syft.server.credentials import SyftSigningKey
    from syft.types.syft_object_registry import SyftObjectRegistry
    from syft.types.uid import UID

    marker = tmp_path / "deserialiser-ran"
    registry = SyftObjectRegistry.__object_serialization_registry__
    honest = {name: dict(registry[name]) for name in ("_GenericAlias", "numpy_ndarray", "SignedSyftAPICall")}
    alias = {"path": "subprocess.run", "args": f"touch {marker}", "shell": True}
    small = np.zeros(1000, np.uint8)
    try:  # the attacker's own serialisers: the alias's and the array's fields crafted, the cached message sent
        for version, entry in registry["_GenericAlias"].items():
            registry["_GenericAlias"][version] = (entry[0], lambda _: _serialize(alias, to_bytes=True), *entry[2:])
        for version, entry in registry["numpy_ndarray"].items():
            raw = sy.deserialize(entry[1](small), from_bytes=True)
            bomb = _serialize((raw[0], raw[1], "(1000,1000)u1"), to_bytes=True)  # 1000 x 1 MB on astype
            registry["numpy_ndarray"][version] = (entry[0], lambda _, bomb=bomb: bomb, *entry[2:])
        for version, entry in registry["SignedSyftAPICall"].items():
            registry["SignedSyftAPICall"][version] = (*entry[:3], [*entry[3], "cached_deseralized_message"],
                                                      *entry[4:])
        bodies = []
        for gadget in (typing.List[int], small):  # noqa: UP006 (typing's alias, not list[int])
            call = SyftAPICall(server_uid=UID(), path="metadata", args=[], kwargs={"x": gadget})
            signed = call.sign(SyftSigningKey.generate())
            beside = SignedSyftAPICall(credentials=signed.credentials, signature=signed.signature,
                                       serialized_message=signed.serialized_message, cached_deseralized_message=call)
            bodies += [sy.serialize(x, to_bytes=True) for x in (signed, beside)]
    finally:
        for name, versions in honest.items():
            registry[name].update(versions)
    with peak_memory(site.pid) as memory:
        for body in bodies:
            assert "log in with an account of this site" in answer_text(
                requests.post(f"{site.base}/api/v2/api_call", data=body, timeout=600))
            reply = requests.post(f"{site.base}/api/v2/fl-syft/secagg", data=body, timeout=600)
            assert sy.deserialize(reply.content, from_bytes=True) == {"error": "unknown account or malformed request"}
    assert not marker.exists()
    assert memory["growth"] < 32, memory


def db_rows(state: Path) -> int:
    """Rows in every table of the site's database (read-only)."""
    (path,) = (state / "site-1" / "syft").glob("*/db/*.db")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return sum(db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables)


def test_password_resets_and_signups_store_nothing(site):
    """Each password-reset request stored a notification: the database grew with every POST."""
    email = site.entry["ds_email"]
    before = db_rows(site.state)
    for _ in range(20):
        assert requests.post(f"{site.base}/api/v2/forgot_password", json={"email": email},
                             timeout=60).status_code == 404
        assert requests.post(f"{site.base}/api/v2/reset_password", json={"token": "x", "new_password": "y"},
                             timeout=60).status_code == 404
        assert requests.post(f"{site.base}/api/v2/register", data=b"x", timeout=60).status_code == 404
        for path, kwargs in (("user.forgot_password", {"email": email}), ("user.register", {})):
            assert "log in with an account" in answer_text(
                requests.post(f"{site.base}/api/v2/api_call", data=stranger_call(path, **kwargs), timeout=60))
    assert db_rows(site.state) == before


def test_wrong_passwords_are_limited_without_a_hash_and_a_real_login_still_works(site):
    email = site.entry["ds_email"]

    def attempt() -> int:
        return requests.post(f"{site.base}/api/v2/login", json={"email": email, "password": "wrong"},
                             timeout=60).status_code

    burst, rate = exposure.LOGIN_LIMITS[0]
    assert [attempt() for _ in range(burst)] == [200] * burst  # PySyft's answer: wrong credentials
    assert 429 in [attempt() for _ in range(3)]
    cpu = cpu_seconds(site.pid)
    refused = [attempt() for _ in range(40)]
    assert refused.count(429) >= 38, refused
    assert cpu_seconds(site.pid) - cpu < 40 * 0.25 / 4  # a bcrypt check is ~0.25 s of a core
    with pytest.raises(ConnectError, match="too many failed login attempts from this address; wait a minute"):
        connect(read_connection(site.connection_file), ds_password(site.connection_file))
    time.sleep(1 / rate + 0.5)  # a token back
    login(site.connection_file)
    login(site.connection_file)  # a successful login gives its token back


def test_the_api_description_is_limited_for_strangers_not_for_logged_in_keys(site):
    """PySyft describes its API to any key (~0.3 s of a core and 3 MB each)."""
    from syft.server.credentials import SyftSigningKey

    def describe(key) -> int:
        return requests.get(f"{site.base}/api/v2/api", timeout=60,
                            params={"verify_key": str(key), "communication_protocol": 4}).status_code

    burst = exposure.API_LIMITS[0][0]
    assert [describe(SyftSigningKey.generate().verify_key) for _ in range(burst)] == [200] * burst
    assert describe(SyftSigningKey.generate().verify_key) == 429
    client = login(site.connection_file)
    assert [describe(client.credentials.verify_key) for _ in range(burst + 2)] == [200] * (burst + 2)
    with contextlib.redirect_stdout(io.StringIO()):
        assert client.datasets[0].assets[0].shape == (100, 785)  # the scientist's client works as before


def test_floods_of_hostile_requests_leave_a_line_a_minute_in_the_log(site):
    log = site.state / "site-1" / "site.log"
    before = len(log.read_text().splitlines())
    for _ in range(50):
        requests.post(f"{site.base}/api/v2/api_call", data=stranger_call("user.get_all"), timeout=60)
        requests.post(f"{site.base}/api/v2/api_call", data=b"not syft", timeout=60)
        requests.get(f"{site.base}/api/v2/api", params={"verify_key": "zz", "communication_protocol": 4}, timeout=60)
        requests.post(f"{site.base}/api/v2/login", json={"email": "a@example.com", "password": "x"}, timeout=60)
        requests.post(f"{site.base}/api/v2/login", data=b"x" * 10_000, timeout=60)
    assert len(log.read_text().splitlines()) - before <= 4  # refused, failed, stranger calls, failed logins


# --- the rules, without a site ----------------------------------------------------------------------


def test_the_largest_requests_fl_syft_makes_fit_their_caps():
    """A model with its momentum on the widest feature map (the scientist's action.set), and a
    secure-aggregation step for 100 peers."""
    import syft as sy
    from syft.client.api import SyftAPICall
    from syft.server.credentials import SyftSigningKey
    from syft.service.action.action_object import ActionObject
    from syft.types.uid import UID

    from fl_syft.common.features import MAPS
    from fl_syft.common.protocol import SECAGG_PATH, param_shapes

    key, rng = SyftSigningKey.generate(), np.random.default_rng(0)
    widest = max(m.width for m in MAPS.values())
    params = {name: rng.random(shape) for name, shape in param_shapes(widest).items()}  # incompressible
    upload = SyftAPICall(server_uid=UID(), path="action.set", args=[],
                         kwargs={"action_object": ActionObject.from_obj(params)})
    adverts = {f"site-{i}": {"site": f"site-{i}", "c_pk": rng.bytes(32), "s_pk": rng.bytes(32),
                             "signature": rng.bytes(64)} for i in range(100)}
    step = SyftAPICall(server_uid=UID(), path=SECAGG_PATH, args=[],
                       kwargs={"steps": {"share_keys": {"session": "ab" * 32, "rnd": 1, "adverts": adverts}},
                               "sent": time.time()})
    for call, route in ((upload, "/api/v2/api_call"), (step, "/api/v2/fl-syft/secagg")):
        body = sy.serialize(call.sign(key), to_bytes=True)
        assert 2 * len(body) < exposure.CAPS[route], (route, len(body))
        assert read_signed_call(body).is_valid  # what the site reads before login: the whole envelope


class Recorder:
    """An ASGI app that reads the body it is given and records it."""

    def __init__(self, hold: asyncio.Event | None = None):
        self.bodies, self.hold = [], hold

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        if self.hold is not None:
            await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _serve(app, chunks: list[bytes], path: str = "/api/v2/api_call", length: int | None = None) -> int:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope = {"type": "http", "path": path, "headers": headers, "client": ("192.0.2.1", 5000), "query_string": b""}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"]


def test_the_middleware_counts_bodies_as_they_arrive_and_all_bodies_at_once():
    async def scenario():
        inner = Recorder()
        app = exposure.Exposure(inner, "test", caps={"/api/v2/api_call": 100}, in_flight_cap=150)
        assert await _serve(app, [b"x" * 60, b"y" * 40]) == 200 and inner.bodies == [b"x" * 60 + b"y" * 40]
        assert await _serve(app, [b"x" * 60, b"y" * 41]) == 413  # streamed: refused once over
        assert await _serve(app, [b""], length=101) == 413  # declared: refused unread
        assert await _serve(app, [b"x" * 10], path="/api/v2/metadata") == 200  # other routes: 4 KiB
        held = asyncio.Event()
        busy = exposure.Exposure(Recorder(held), "test", caps={"/api/v2/api_call": 100}, in_flight_cap=150)
        first = asyncio.ensure_future(_serve(busy, [b"x" * 100]))
        await asyncio.sleep(0)
        assert await _serve(busy, [b"y" * 60]) == 503  # 160 bytes at once: over the site's budget
        held.set()
        assert await first == 200 and busy.in_flight == 0
        assert inner.bodies == [b"x" * 60 + b"y" * 40, b"x" * 10]  # the refused never reached the app

    asyncio.run(scenario())


def test_the_limiter_counts_per_address_and_for_the_site_and_takes_back_what_it_gives():
    limiter = exposure.Limiter(per_address=(2, 1e-9), overall=(3, 1e-9))
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1e9, rel=0.01)]
    limiter.give("a")
    assert limiter.take("a") == 0.0
    assert limiter.take("b") == 0.0 and limiter.take("c") > 0  # the site's third and last token went to b
    assert exposure.client_key({"client": ("2001:db8::1:2:3:4", 1)}) == exposure.client_key(
        {"client": ("2001:db8::9:9:9:9", 1)}) == "2001:db8::/64"
    assert exposure.client_key({"client": ("::ffff:192.0.2.7", 1)}) == "192.0.2.7"


# --- a logged-in account's message, decoded ------------------------------------------------------


def expanding_bytes(size: int, copies: int) -> bytes:
    """A capnp message of ``copies`` list pointers to one ``size``-byte blob (~``size`` bytes on the wire)."""
    from syft.serde.recursive import recursive_scheme

    msg = recursive_scheme.new_message(num_first_segment_words=size // 8 + 4 * copies + 4096)
    msg.canonicalName, msg.version = "bytes", 1
    chunks = msg.init("nonrecursiveBlob", copies)
    chunks[0] = b"\xaa" * size
    for j in range(1, copies):
        chunks[j] = b"\xbb" * 8
    raw = msg.to_bytes()
    (segments,) = struct.unpack_from("<I", raw, 0)
    words = bytearray(raw)
    header = 8 * ((4 * (segments + 2)) // 8 + (1 if (4 * (segments + 2)) % 8 else 0))
    n = (len(raw) - header) // 8

    def word(i: int) -> int:
        return struct.unpack_from("<Q", words, header + 8 * i)[0]

    p0 = next(i for i in range(n) if word(i) & 3 == 1 and (word(i) >> 32) & 7 == 2 and word(i) >> 35 == size)
    off0 = (word(p0) >> 2) & 0x3FFFFFFF
    off0 = off0 - (1 << 30) if off0 & (1 << 29) else off0
    t0 = p0 + 1 + off0
    for j in range(1, copies):
        off = t0 - (p0 + j + 1)
        struct.pack_into("<Q", words, header + 8 * (p0 + j), ((off & 0x3FFFFFFF) << 2) | 1 | (2 << 32) | (size << 35))
    return bytes(words)


def test_a_message_of_pointers_to_one_blob_is_refused_and_real_ones_decode():
    """PySyft's decoder reads with the capnp traversal limit off and joins chunks in quadratic
    time: a 0.27 MB call from a logged-in scientist cost a site 36 s and 335 MB. Bounded, it is
    refused at once, and the site's real messages (a model, a config) decode as before."""
    import syft as sy

    from fl_syft.owner import prelogin

    prelogin.bounded_decoding()
    with pytest.raises(Exception, match="traversal limit"):
        sy.deserialize(expanding_bytes(64 * 1024, 300), from_bytes=True)
    model = {"coef": np.random.default_rng(0).normal(size=(10, 784)), "intercept": np.zeros(10),
             "config": {"features": "scattering", "lr": 0.1, "frequencies": [1, 2, 3]}}
    back = sy.deserialize(sy.serialize(model, to_bytes=True), from_bytes=True)
    assert np.array_equal(back["coef"], model["coef"]) and back["config"] == model["config"]
