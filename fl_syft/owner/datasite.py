"""One PySyft datasite in its own OS process (data owner side).

``python -m fl_syft.owner.datasite SPEC.json`` builds the datasite (its identity persisted in
the site's state directory so ``--keep`` restarts with datasets, accounts and audit log),
makes sure the data scientist's account and the private shard exist, starts the
auto-approver, and serves the PySyft API with uvicorn until SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fl_syft.common.files import write_json, write_private
from fl_syft.common.policy import PrivacyPolicy, default_delta

log = logging.getLogger("fl_syft.datasite")

ASSET_NAME = "mnist-shard"
MOCK_ROWS = 100


@dataclass(frozen=True)
class SiteSpec:
    """Everything a site process needs; written by the launcher as ``spec.json`` (0600)."""

    name: str
    host: str
    port: int
    state_dir: str  # this site's own directory
    admin_email: str
    admin_password: str
    ds_email: str
    ds_password: str
    fresh: bool = True  # wipe earlier state (the launcher's default; --keep sets False)
    db_url: str | None = None
    policy: dict = field(default_factory=lambda: PrivacyPolicy().to_dict())  # PrivacyPolicy; delta None: by rows

    @property
    def dir(self) -> Path:
        return Path(self.state_dir)

    def save(self, path: Path) -> None:
        write_private(path, json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> SiteSpec:
        return cls(**json.loads(path.read_text()))


def synthetic_mock(n_rows: int = MOCK_ROWS, seed: int = 0) -> np.ndarray:
    """(n_rows, 785) uint8: uniform random pixels and labels 0..9 each present.

    Never derived from real rows; small because PySyft runs every call on the mock too,
    but valid for ``ml_experiment`` (all 10 classes, so a warm start fits).
    """
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n_rows, 784), dtype=np.uint8)
    labels = rng.permutation(np.arange(n_rows) % 10).astype(np.uint8)
    return np.column_stack([pixels, labels])


def identity(site_dir: Path) -> tuple[str, str]:
    """(server uid hex, signing key hex) from ``identity.json``, which the launcher writes (0600) so
    that restarts keep it and the federation's peers know the site's verify key before it starts."""
    saved = json.loads((site_dir / "identity.json").read_text())
    return saved["server_uid"], saved["signing_key"]


def build_server(spec: SiteSpec):
    """The Datasite object, with our admin credentials from the start (never the default)."""
    os.environ["SYFT_TEMP_ROOT"] = str(spec.dir / "syft")  # db and blobs inside the state dir
    # Keep shards in the database instead of blob files: ~3x faster calls (see notes).
    os.environ.setdefault("MIN_SIZE_BLOB_STORAGE_MB", "500")
    uid, key = identity(spec.dir)
    from syft.server.credentials import SyftSigningKey
    from syft.server.datasite import Datasite
    from syft.types.uid import UID

    return Datasite(
        name=spec.name, id=UID(uid), signing_key=SyftSigningKey.from_string(key),
        root_email=spec.admin_email, root_password=spec.admin_password,
        reset=spec.fresh, db_url=spec.db_url, dev_mode=False, enable_warnings=False,
    )


def ensure_accounts_and_data(server, spec: SiteSpec, shard: np.ndarray | None) -> int:
    """Create the scientist's account and upload the shard unless present; return rows held.

    On a kept state the admin's and the scientist's passwords are set to the spec's, so a
    password changed between starts (FL_SYFT_*_PASSWORD) is the one that works."""
    import syft as sy

    root = server.root_client
    scientist = next((u for u in root.users.get_all() if u.email == spec.ds_email), None)
    with contextlib.redirect_stdout(io.StringIO()):  # PySyft prints a banner per change
        if scientist is None:
            root.users.create(name="Data Scientist", email=spec.ds_email, password=spec.ds_password,
                              password_verify=spec.ds_password, institution="fl-syft")
            log.info("%s: created data scientist account %s", spec.name, spec.ds_email)
        elif not spec.fresh:
            root.users.update(uid=scientist.id, password=spec.ds_password)
            root.account.set_password(spec.admin_password, confirm=False)
    existing = [d for d in root.datasets.get_all() if d.name == dataset_name(spec.name)]
    if existing:
        return int(existing[0].assets[ASSET_NAME].data.shape[0])  # .shape would be the mock's
    if shard is None:
        raise RuntimeError(f"{spec.name}: no dataset in the kept state and no shard to upload; "
                           "start without --keep")
    dataset = sy.Dataset(
        name=dataset_name(spec.name),
        description=(f"Private MNIST shard of {spec.name}: {len(shard)} rows x 785 uint8 columns "
                     "(784 pixels 0..255, then the label 0..9). The mock is synthetic noise."),
    )
    dataset.add_asset(sy.Asset(name=ASSET_NAME, data=shard, mock=synthetic_mock(seed=spec.port)))
    root.upload_dataset(dataset)
    log.info("%s: uploaded %d rows", spec.name, len(shard))
    return len(shard)


def dataset_name(site: str) -> str:
    return f"mnist-{site}"


def run_site(spec: SiteSpec) -> None:
    """Build, prepare and serve one datasite until SIGTERM/SIGINT (blocking)."""
    from fl_syft.owner.approval import Approver
    from fl_syft.owner.audit import AuditLog
    from fl_syft.owner.state import StateLock

    StateLock(spec.dir, f"datasite {spec.name}").acquire()  # held until this process ends
    shard_path = spec.dir / "shard.npy"
    shard = np.load(shard_path) if shard_path.exists() else None
    server = build_server(spec)
    rows = ensure_accounts_and_data(server, spec, shard)
    if shard is not None:  # what the ledger belongs to: these rows, whichever deployment serves them
        write_json(spec.dir / "data.json", {"sha256": shard_sha256(shard), "rows": rows})
    shard_path.unlink(missing_ok=True)  # the datasite holds it now; no second copy on disk
    del shard

    _keep_decoded_arrays()
    _flat_call_cost()
    _read_assets_from_memory(server)
    audit = AuditLog(spec.dir / "audit.jsonl", spec.name)
    guard = _install_guard(server, spec, rows, audit)
    approver = Approver(server.root_client, _request_counter(server), spec.name, audit)
    threading.Thread(target=approver.run_forever, name="approver", daemon=True).start()
    _exit_with_parent()
    write_private(spec.dir / "status.json", json.dumps({"rows": rows, "pid": os.getpid(),
                                                        "privacy": guard.policy.describe()}))
    log.info("%s: serving %d rows on http://%s:%d", spec.name, rows, spec.host, spec.port)
    _run_uvicorn(server, spec.host, spec.port, guard)


def shard_sha256(shard: np.ndarray) -> str:
    """The identity of a shard's rows (what a privacy ledger belongs to)."""
    return hashlib.sha256(np.ascontiguousarray(shard).tobytes()).hexdigest()


def site_policy_from(policy: dict, rows: int) -> PrivacyPolicy:
    """The owner's policy (``launch.owner_policy``) for a site of ``rows`` rows: its delta, if
    unset, below 1/rows; checked against the rows."""
    doc = dict(policy)
    if doc.get("delta") is None:
        doc["delta"] = default_delta(rows)
    site = PrivacyPolicy.from_dict(doc)
    site.check(rows)
    return site


def _install_guard(server, spec: SiteSpec, rows: int, audit):
    """The owner's guard for this site, installed between PySyft and the vetted code, and its
    privacy status published as the API endpoint ``fl_syft.privacy``."""
    from fl_syft.owner import guard as guards
    from fl_syft.owner.ledger import Ledger

    policy = site_policy_from(spec.policy, rows)
    ledger = None
    if policy.dp:
        data = json.loads((spec.dir / "data.json").read_text())
        ledger = Ledger(spec.dir / "privacy-ledger.jsonl", data["sha256"], policy.epsilon, policy.delta)
    secure = None
    if policy.peers:
        from fl_syft.owner.secagg import SecAggSite

        signing = server.signing_key.signing_key  # the datasite's own identity signs its round keys
        secure = SecAggSite(spec.name, lambda message: signing.sign(message).signature, policy.peers,
                            policy.threshold, spec.dir / "secagg.jsonl")
    guard = guards.Guard(spec.name, policy, rows, ledger, audit.write, secure)
    if policy.dp:
        guard.publish_row_count()
    root = server.root_client
    # An unknown key is still audited, by its key.
    guards.install(guard, np.asarray(root.datasets[0].assets[0].mock),
                   lambda key: guards.account_email(server, key) or str(key))
    guards.publish_status(root)
    log.info("%s: %s", spec.name, policy.describe())
    return guard


def _request_counter(server) -> Callable[[], int]:
    """The number of code requests in the site's database, as one plain ``SELECT COUNT(*)``.
    The approver asks ten times a second; PySyft's ``len(stash)`` compiled an ORM query
    each time, ~2% of a core per idle site (10% of this machine with 10 sites)."""
    stash = server.services.request.stash
    engine = stash.db.engine
    sql = f"SELECT COUNT(*) FROM {engine.dialect.identifier_preparer.quote(stash.table.name)}"

    def count() -> int:
        with engine.connect() as connection:
            return int(connection.exec_driver_sql(sql).scalar_one())

    return count


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


def _flat_call_cost() -> None:
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


def _read_assets_from_memory(server) -> None:
    assets = [asset.action_id for dataset in server.root_client.datasets.get_all() for asset in dataset.assets]
    AssetReads(server.services.action.stash, server.verify_key, {uid.id for uid in assets}).install()


def _keep_decoded_arrays() -> None:
    from syft.serde import json_serde

    json_serde._deserialize_from_json_bytes = DecodedArrayCache(json_serde._deserialize_from_json_bytes)


def _run_uvicorn(server, host: str, port: int, guard) -> None:
    import uvicorn
    from fastapi import APIRouter, FastAPI
    from syft.server.routes import make_routes

    from fl_syft.owner.guard import secagg_router

    app = FastAPI(title=server.name)
    router = APIRouter()
    router.include_router(make_routes(worker=server))
    router.include_router(secagg_router(server, guard))
    app.include_router(router, prefix="/api/v2")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()  # handles SIGTERM/SIGINT: finish requests, then return
    server.stop()


def _exit_with_parent() -> None:
    """If the launcher dies without stopping us (kill -9), stop too: never orphan a port."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("launcher process is gone; stopping")
        os.kill(os.getpid(), 15)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.umask(0o077)  # the database, blobs and logs hold private rows: owner-only from creation
    spec = SiteSpec.load(Path(argv[0]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout, force=True)
    logging.getLogger("fl_syft").setLevel(logging.INFO)
    verbose = os.environ.get("FL_SYFT_VERBOSE") == "1"
    for noisy in ("syft", "uvicorn", "itables", "httpx"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)
    if verbose:  # the real traceback of a failing user function (PySyft hides it)
        logging.getLogger("syft.service.code.user_code").setLevel(logging.ERROR)
    run_site(spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
