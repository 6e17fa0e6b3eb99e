"""One PySyft datasite in its own OS process (data owner side).

``python -m fl_syft.owner.datasite SPEC.json`` builds the datasite (its identity persisted in
the site's state directory so ``--keep`` restarts with datasets, accounts and audit log),
makes sure the data scientist's account and the private shard exist, starts the
auto-approver, and serves the PySyft API with uvicorn until SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fl_syft.common.files import array_sha256, write_json, write_private
from fl_syft.common.protocol import STATUS_PATH
from fl_syft.owner.features import FEATURES, site_features
from fl_syft.owner.policy import OwnerPolicy

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
    policy: OwnerPolicy = field(default_factory=OwnerPolicy)  # the owner's, for this site to resolve for its rows
    tls_cert: str | None = None  # PEM files uvicorn serves TLS with (None: plain HTTP)
    tls_key: str | None = None
    tls_fingerprint: str = ""  # SHA-256 of tls_cert (what clients pin)

    @property
    def dir(self) -> Path:
        return Path(self.state_dir)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def save(self, path: Path) -> None:
        write_private(path, json.dumps({**asdict(self), "policy": self.policy.to_dict()}))

    @classmethod
    def load(cls, path: Path) -> SiteSpec:
        doc = json.loads(path.read_text())
        return cls(**{**doc, "policy": OwnerPolicy.from_dict(doc["policy"])})


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


def ensure_accounts_and_data(server, spec: SiteSpec, shard: np.ndarray | None) -> np.ndarray:
    """Create the scientist's account and upload the shard unless present; return the rows held
    (the guard's own copy: what the vetted functions run on).

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
        return np.asarray(existing[0].assets[ASSET_NAME].data)
    if shard is None:
        raise RuntimeError(f"{spec.name}: no dataset in the kept state and no shard to upload; "
                           "start without --keep")
    # What a scientist reads without a call says nothing of the rows: no row count in the text, the
    # mock's shape as the asset's (PySyft's default), and no size (PySyft records the data's MB).
    dataset = sy.Dataset(
        name=dataset_name(spec.name),
        description=(f"Private MNIST shard of {spec.name}: rows of 785 uint8 columns (784 pixels 0..255, then "
                     "the label 0..9); the site publishes its row count only with noise. The mock is synthetic."),
    )
    dataset.add_asset(sy.Asset(name=ASSET_NAME, data=shard, mock=synthetic_mock(seed=spec.port)))
    root.upload_dataset(dataset)
    _forget_size(server, dataset_name(spec.name))
    log.info("%s: uploaded %d rows", spec.name, len(shard))
    return shard


def _forget_size(server, name: str) -> None:
    stash = server.services.dataset.stash
    for stored in stash.get_all(server.verify_key).unwrap():
        if stored.name == name:
            stored.mb_size = None
            stash.update(server.verify_key, stored).unwrap()


def dataset_name(site: str) -> str:
    return f"mnist-{site}"


def run_site(spec: SiteSpec) -> None:
    """Build, prepare and serve one datasite until SIGTERM/SIGINT (blocking)."""
    from fl_syft.owner import syft_patches
    from fl_syft.owner.approval import Approver, reject_unapplied
    from fl_syft.owner.audit import AuditLog
    from fl_syft.owner.guard import Refused
    from fl_syft.owner.state import StateLock
    from fl_syft.owner.status_view import log_call

    StateLock(spec.dir, f"datasite {spec.name}").acquire()  # held until this process ends
    shard_path = spec.dir / "shard.npy"
    shard = np.load(shard_path) if shard_path.exists() else None
    syft_patches.before_server()
    server = build_server(spec)
    private = ensure_accounts_and_data(server, spec, shard)
    rows = len(private)
    if shard is not None:  # what the ledger belongs to: these rows, whichever deployment serves them
        write_json(spec.dir / "data.json", {"sha256": shard_sha256(shard), "rows": rows})
    shard_path.unlink(missing_ok=True)  # the datasite holds it now (its features stay in <state root>/features/)
    del shard

    syft_patches.keep_decoded_arrays()
    syft_patches.flat_call_cost()
    syft_patches.read_assets_from_memory(server)
    if os.environ.get("FL_SYFT_VERBOSE") != "1":  # --verbose: PySyft's traceback of each refusal too
        syft_patches.quiet_refusals(Refused)
    audit = AuditLog(spec.dir / "audit.jsonl", spec.name, on_write=log_call)  # one line per call in site.log
    approver = Approver(server.root_client, _request_counter(server), spec.name, audit, reject_unapplied(server))
    features = site_features(private, spec.dir.parent / FEATURES, spec.name)  # once: every call reads these
    guard = _install_guard(server, spec, features, audit, approver.vet)
    quota = syft_patches.ScientistQuota(spec.dir / "quota.json", int(guard.policy.storage_quota_mb * 2 ** 20))
    syft_patches.scientist_api(server, quota, endpoints=frozenset({STATUS_PATH}))
    threading.Thread(target=approver.run_forever, name="approver", daemon=True).start()
    _exit_with_parent()
    write_private(spec.dir / "status.json", json.dumps({"rows": rows, "pid": os.getpid(),
                                                        "privacy": guard.policy.describe()}))
    log.info("%s: serving %d rows on %s://%s:%d", spec.name, rows, spec.scheme, spec.host, spec.port)
    _run_uvicorn(server, spec, guard)


def shard_sha256(shard: np.ndarray) -> str:
    """The identity of a shard's rows (what a privacy ledger belongs to)."""
    return array_sha256(shard)


def _install_guard(server, spec: SiteSpec, features: dict[str, dict], audit, vet: Callable[[object], object]):
    """The owner's guard for this site (``owner.site.assemble``), made the only runner of code on
    the site's rows (``features``: theirs, ``owner.features.site_features``; ``vet`` re-checks a
    call's code), and its privacy status published as the API endpoint ``fl_syft.privacy``."""
    from fl_syft.owner import datasite_guard as guards
    from fl_syft.owner.ledger import Ledger, open_site_ledger
    from fl_syft.owner.site import assemble

    def open_ledger(total: float, delta: float) -> Ledger:
        # The rows' ledger, in the owner's store (<state root>/ledgers/): a fresh start keeps it.
        data = json.loads((spec.dir / "data.json").read_text())
        return open_site_ledger(spec.dir, data["sha256"], total, delta)

    # The datasite's own identity signs its round keys.
    rows = len(next(iter(features.values()))["y"])
    guard = assemble(spec.name, spec.policy, rows, open_ledger=open_ledger,
                     signing_key=server.signing_key.signing_key, secagg_journal=spec.dir / "secagg.jsonl",
                     audit=audit.write)
    root = server.root_client
    # An unknown key is still audited, by its key.
    mock = np.asarray(root.datasets[0].assets[0].mock)
    guards.install(guard, features, mock, site_features(mock, None, f"{spec.name}'s mock"),
                   lambda key: guards.account_email(server, key) or str(key), vet)
    guards.publish_status(root)
    log.info("%s: %s", spec.name, guard.policy.describe())
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


def _run_uvicorn(server, spec: SiteSpec, guard) -> None:
    import uvicorn
    from fastapi import APIRouter, FastAPI
    from syft.server.routes import make_routes

    from fl_syft.owner.datasite_guard import secagg_router
    from fl_syft.owner.exposure import HTTP, harden

    app = FastAPI(title=server.name)
    router = APIRouter()
    router.include_router(make_routes(worker=server))
    router.include_router(secagg_router(server, guard))
    app.include_router(router, prefix="/api/v2")
    harden(app, server)  # what anyone reaching the port can cost the site before logging in: bounded
    # proxy_headers off: uvicorn would take X-Forwarded-For from any loopback client as its address
    # (the login limit is per address).
    config = uvicorn.Config(app, host=spec.host, port=spec.port, log_level="warning", access_log=False, http=HTTP,
                            ssl_certfile=spec.tls_cert, ssl_keyfile=spec.tls_key, proxy_headers=False)
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
    else:  # PySyft's routes use FastAPI's old ``example=``: a warning at every start, nothing for the owner
        warnings.filterwarnings("ignore", message="`example` has been deprecated", category=DeprecationWarning)
    run_site(spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
