"""Start and stop local datasites (data owner side).

One code path for both entry points: ``fl-syft launch`` / ``python launch_datasites.py``
(N sites, each a shard of a partitioned data set) and ``fl-syft serve`` (one site with the
owner's own file). Each site runs ``python -m fl_syft.owner.datasite`` in its own process (a
crash of one leaves the others up). The connection file ``<state-dir>/datasites.json`` is
written only once every site answers, so its presence means "ready"; it is removed on
shutdown.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from tqdm import tqdm

from fl_syft.common.cards import Card, Invite
from fl_syft.common.errors import ConfigError
from fl_syft.common.files import write_json, write_private
from fl_syft.common.partition import PartitionSpec
from fl_syft.owner.audit import AuditLog
from fl_syft.owner.datasite import SiteSpec
from fl_syft.owner.ledger import SITE_LINK, LedgerStore
from fl_syft.owner.network import (
    LOOPBACK,
    answers,
    check_port_free,
    check_tls,
    client_host,
    reachable_hosts,
    serves_tls,
)
from fl_syft.owner.policy import OwnerPolicy
from fl_syft.owner.provision import (
    LaunchError,
    check_ledgers,
    check_rows,
    held_rows,
    note_kept_budget,
    reset_budget,
    resolve_secrets,
    site_identity,
)
from fl_syft.owner.state import StateLock, StateLocked, holder, make_private
from fl_syft.owner.tls import check_pair, site_certificate

log = logging.getLogger("fl_syft.launch")

ADMIN_EMAIL = "owner@fl-syft.example.com"
DS_EMAIL = "scientist@fl-syft.example.com"
START_TIMEOUT = 300.0  # a cold start computes each shard's scattering features (~1 ms a row)


@dataclass(frozen=True)
class SiteSetup:
    """One site to start: its name, port and (PostgreSQL) database."""

    name: str
    port: int
    db_url: str | None = None


class DeploymentOptions(Protocol):
    """What :class:`Deployment` needs; :class:`LaunchOptions` and ``serve.ServeOptions`` provide it."""

    host: str
    state_dir: Path
    keep: bool
    reset_privacy_budget: bool  # the owner starts the budget of the sites' rows again (else it is theirs for good)
    verbose: bool
    port_field: str  # the setting to change when a port is busy
    command: str  # who holds the state directory's lock: "launch", "demo", "serve"
    policy: OwnerPolicy
    tls_cert: Path | None  # the owner's own certificate and key (else self-signed, when TLS is on)
    tls_key: Path | None
    insecure_http: bool  # plain HTTP where TLS is the default
    public_host: str | None  # the host invites and cards name (default: the bind address)

    def check(self) -> None: ...

    def setups(self) -> list[SiteSetup]: ...

    def load_shards(self) -> list[np.ndarray]: ...


@dataclass
class LaunchOptions:
    """N local sites, each holding one shard of ``data`` split by ``partition``."""

    partition: PartitionSpec = field(default_factory=PartitionSpec)
    data: str = "embedded"
    base_port: int = 54879
    host: str = "127.0.0.1"
    state_dir: Path = Path(".fl-syft")
    keep: bool = False
    reset_privacy_budget: bool = False
    db_url: str | None = None  # PostgreSQL URL prefix; one database per site is derived
    verbose: bool = False
    command: str = "launch"
    policy: OwnerPolicy = field(default_factory=OwnerPolicy)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    public_host: str | None = None  # the host invites and cards name (default: the bind address)
    port_field = "base_port"

    def check(self) -> None:
        """Raise ConfigError (one line naming the setting) for values that cannot work."""
        n = self.partition.n_sites
        last = self.base_port + n - 1
        if not 1024 <= self.base_port or last > 65535:
            raise ConfigError(f"{{base_port}} {self.base_port} with {n} sites needs ports "
                              f"{self.base_port}..{last}: use 1024..{65536 - n}")
        if self.db_url:
            site_db_url(self.db_url, "site-1")  # the URL's form, before anything starts
        check_tls(self)
        self.policy.for_sites(site_names(n))  # the federation's counts

    def setups(self) -> list[SiteSetup]:
        return [SiteSetup(name, self.base_port + i, site_db_url(self.db_url, name) if self.db_url else None)
                for i, name in enumerate(site_names(self.partition.n_sites))]

    def load_shards(self) -> list[np.ndarray]:
        from fl_syft.common.data import load_mnist
        from fl_syft.common.partition import make_shards

        mnist = load_mnist(self.data)
        self.partition.check(len(mnist.y_train))
        return make_shards(mnist.X_train, mnist.y_train, self.partition)


def site_names(n: int) -> list[str]:
    """site-1..site-N: the names launched sites get (and in-process simulation uses)."""
    return [f"site-{i}" for i in range(1, n + 1)]


class Deployment:
    """The local datasites of one start; as a context manager, always stopped on exit."""

    def __init__(self, opts: DeploymentOptions):
        self.opts = opts
        self.state = Path(opts.state_dir).resolve()
        self.procs: dict[str, subprocess.Popen] = {}
        self.specs: dict[str, SiteSpec] = {}
        self.lock = StateLock(self.state, f"fl-syft {opts.command}")

    @property
    def connection_file(self) -> Path:
        return self.state / "datasites.json"

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, while_starting: Callable[[], object] | None = None) -> list[dict]:
        """Start every site, wait until all answer, write the connection file; return the table.
        ``while_starting()`` runs once the sites are spawned, before waiting for them.

        Everything that can be checked is checked before anything is written: the state
        directory's lock (a running deployment's directory is never touched), the ports, the
        data and the saved state to keep. On failure the lock is released again."""
        self.lock.acquire()
        try:
            return self._start(while_starting)
        except BaseException:
            self.stop()
            raise

    def _start(self, while_starting: Callable[[], object] | None) -> list[dict]:
        opts, setups = self.opts, self.opts.setups()
        for setup in setups:
            lingering = holder(self.state / setup.name)
            if lingering:
                raise StateLocked(f"{self.state / setup.name} is still served by {lingering}: wait for it to stop")
        if opts.host not in LOOPBACK:
            log.warning("binding to %s: the datasites are reachable from other machines", opts.host)
        for setup in setups:
            check_port_free(opts.host, setup.port, opts.port_field)
        for setup in setups if opts.keep else []:
            if not (self.state / setup.name / "identity.json").exists():
                raise LaunchError(f"{{keep}}: no saved state for {setup.name} in {self.state / setup.name}; "
                                  "start once without {keep}")
        shards = [None] * len(setups) if opts.keep else opts.load_shards()
        held = [held_rows(self.state / setup.name, shard) for setup, shard in zip(setups, shards, strict=True)]
        names = [setup.name for setup in setups]
        check_rows(names, held, opts.policy.for_sites(names))
        check_ledgers(self.state, names, held, opts.policy, opts.reset_privacy_budget)
        if opts.tls_cert:
            check_pair(opts.tls_cert, opts.tls_key)
        for setup in setups:
            if setup.db_url:
                ensure_database(setup.db_url)
        # Validated: from here on the state directory is written.
        if not serves_tls(opts):
            if opts.host in LOOPBACK:
                log.info("plain HTTP on loopback: only this machine can reach the sites (TLS off loopback)")
            else:
                log.warning("--insecure-http: no TLS; the scientist's password, the models and every update cross "
                            "the network readable, and can be altered on the way")
        tightened = make_private(self.state)
        if tightened:
            log.warning("%s: made %d files and directories owner-only (they were readable by others)",
                        self.state, tightened)
        self.connection_file.unlink(missing_ok=True)
        pw = resolve_secrets(self.state, opts.keep)
        store = LedgerStore(self.state)  # the rows' ledgers: outside the site directories, never wiped
        for setup, shard, rows in zip(setups, shards, held, strict=True):
            site_dir = self.state / setup.name
            store.adopt(site_dir / SITE_LINK)  # a ledger from before the store goes into it
            reset = reset_budget(store, setup.name, rows[0]) if opts.reset_privacy_budget and rows else None
            if not opts.keep:
                if rows and not reset:
                    note_kept_budget(store, setup.name, rows[0])
                shutil.rmtree(site_dir, ignore_errors=True)
                write_private(site_dir / "shard.npy", _npy_bytes(shard))
            if reset:
                AuditLog(site_dir / "audit.jsonl", setup.name).write(reset)
        # Every site knows its peers' verify keys before it starts: secure aggregation trusts no
        # key that reaches it through the scientist unless one of these signed it.
        keys = {setup.name: site_identity(self.state / setup.name, fresh=not opts.keep)["verify_key"]
                for setup in setups}
        policy = opts.policy.for_federation(keys)
        own = (opts.tls_cert, opts.tls_key) if opts.tls_cert else None
        for setup in setups:
            site_dir = self.state / setup.name
            tls = site_certificate(site_dir, setup.name, self.public_hosts, not opts.keep, own) if serves_tls(opts) \
                else None
            spec = SiteSpec(name=setup.name, host=opts.host, port=setup.port, state_dir=str(site_dir),
                            admin_email=ADMIN_EMAIL, admin_password=pw["admin_password"], ds_email=DS_EMAIL,
                            ds_password=pw["ds_password"], fresh=not opts.keep, db_url=setup.db_url,
                            policy=policy, tls_cert=tls and str(tls.cert), tls_key=tls and str(tls.key),
                            tls_fingerprint=tls.fingerprint if tls else "")
            self.specs[setup.name] = spec
            if opts.keep:
                _note_policy_change(site_dir / "spec.json", spec)
            (site_dir / "status.json").unlink(missing_ok=True)
            spec.save(site_dir / "spec.json")
            self.procs[setup.name] = self._spawn(spec)
        if while_starting:
            while_starting()
        table = self._wait_ready()
        for spec in self.specs.values():  # what the owner sends out: the scientist's invite, the peers' card
            invite = self.invite(spec.name)
            write_json(spec.dir / "invite.json", invite.to_dict())
            write_json(spec.dir / "card.json", invite.card.to_dict())
        write_json(self.connection_file, {"datasites": [
            {"name": s.name, "url": f"{s.scheme}://{client_host(s.host)}", "port": s.port, "ds_email": s.ds_email,
             "fingerprint": s.tls_fingerprint} for s in self.specs.values()]})
        return table

    @property
    def public_hosts(self) -> list[str]:
        """The hosts scientists reach the sites at: ``--public-host``, else the bind address's."""
        return [self.opts.public_host] if self.opts.public_host else reachable_hosts(self.opts.host)

    def invite(self, name: str) -> Invite:
        """The scientist's invite to site ``name`` (its card and the scientist's login)."""
        spec = self.specs[name]
        key = site_identity(spec.dir, fresh=False)["verify_key"]
        card = Card(name, f"{spec.scheme}://{self.public_hosts[0]}:{spec.port}", spec.tls_fingerprint, key)
        return Invite(card, spec.ds_email, spec.ds_password)

    def _spawn(self, spec: SiteSpec) -> subprocess.Popen:
        # One BLAS thread per site (sites run side by side), set before any BLAS library loads.
        env = {**os.environ, "FL_SYFT_VERBOSE": "1" if self.opts.verbose else "0", "TQDM_DISABLE": "1",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        # Own session: a terminal Ctrl-C reaches only the launcher, which stops sites in order.
        # No stdin: a PySyft confirmation prompt must fail, never wait forever.
        with os.fdopen(os.open(spec.dir / "site.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as out:
            return subprocess.Popen([sys.executable, "-m", "fl_syft.owner.datasite", str(spec.dir / "spec.json")],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)

    def restart(self, name: str) -> dict:
        """Stop ``name`` if running and start it again on its kept state (as ``--keep`` does)."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
        spec = replace(self.specs[name], fresh=False)
        self.specs[name] = spec
        (spec.dir / "status.json").unlink(missing_ok=True)
        spec.save(spec.dir / "spec.json")
        self.procs[name] = self._spawn(spec)
        return self._wait_ready([name])[0]

    def _wait_ready(self, names: list[str] | None = None) -> list[dict]:
        table, deadline = [], time.monotonic() + START_TIMEOUT
        names = names or list(self.specs)
        with tqdm(total=len(names), desc="starting datasites (features: once per shard)", unit="site",
                  leave=False) as bar:
            for name in names:
                spec = self.specs[name]
                while not answers(spec):
                    code = self.procs[name].poll()
                    if code is not None:
                        raise LaunchError(f"{name} exited during start-up (code {code}): "
                                          f"{_last_line(spec.dir / 'site.log')} (log: {spec.dir / 'site.log'})")
                    if time.monotonic() > deadline:
                        raise LaunchError(f"{name} did not answer within {START_TIMEOUT:.0f} s (last log line: "
                                          f"{_last_line(spec.dir / 'site.log')}); see {spec.dir / 'site.log'}")
                    time.sleep(0.2)
                status = json.loads((spec.dir / "status.json").read_text())
                table.append({"name": name, "url": f"{spec.scheme}://{spec.host}:{spec.port}", "rows": status["rows"],
                              "privacy": status["privacy"]})
                bar.update()
        return table

    def stop(self) -> None:
        """SIGTERM every site, wait for it (SIGKILL after 15 s), remove the connection file, release
        the state directory. (Only a deployment that holds the lock touches the directory.)"""
        if self.lock.held:
            self.connection_file.unlink(missing_ok=True)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 15 s; killing it", name)
                proc.kill()
                proc.wait()
        self.procs.clear()
        self.lock.release()

    def serve_forever(self) -> None:
        """Block until SIGINT/SIGTERM, reporting any site that stops on its own; once none is left
        running, raise LaunchError saying why the last one stopped (the ``with`` that holds this
        deployment then releases the state directory, so a restart can take it)."""
        for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background job starts with it ignored
            signal.signal(sig, _raise_interrupt)
        reported: set[str] = set()
        try:
            while True:
                for name, proc in self.procs.items():
                    if proc.poll() is not None and name not in reported:
                        reported.add(name)
                        log_file = self.specs[name].dir / "site.log"
                        why = f"{_exit_reason(proc.returncode)}; its last log line: {_last_line(log_file)}"
                        running = [other for other, p in self.procs.items() if p.poll() is None]
                        if not running:
                            last = " (and no other site is running)" if len(self.procs) > 1 else ""
                            raise LaunchError(f"{name} stopped unexpectedly{last} ({why}; log: {log_file}): "
                                              "nothing is served any more; see the log, then start again "
                                              "with {keep} and the same flags (--peers, --dp-epsilon ...: "
                                              "{keep} keeps the state, not the flags)")
                        log.error("%s stopped unexpectedly (%s); the other sites keep running (%s); log: %s",
                                  name, why, ", ".join(running), log_file)
                time.sleep(0.5)
        except KeyboardInterrupt:
            log.info("stopping datasites")


def site_db_url(db_url: str, site: str) -> str:
    """``postgresql://u:p@h:port/fl_syft`` -> ``.../fl_syft_site_1``: one database per site
    (PySyft's reset drops tables of fixed names, so sites must not share one)."""
    parts = urlsplit(db_url)
    database = parts.path.lstrip("/")
    if parts.scheme != "postgresql" or not parts.hostname or not database:
        raise ConfigError(f"{{db_url}} {db_url!r} must look like postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    return urlunsplit(parts._replace(path=f"/{database}_{site.replace('-', '_')}"))


def ensure_database(url: str) -> None:
    """Create the database of ``url`` on its server if it does not exist yet."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    database = parts.path.lstrip("/")
    try:
        with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True, connect_timeout=5) as db:
            if not db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as e:
        reason = " ".join(str(e).split())[:200]
        raise LaunchError(f"PostgreSQL at {parts.hostname}:{parts.port or 5432}: {reason}; check --db-url") from None


def _note_policy_change(saved: Path, spec: SiteSpec) -> None:
    """A ``--keep`` start runs the policy of this start's flags: say so where it differs from the
    last start's (a restart without ``--peers`` or ``--dp-epsilon`` would drop them unnoticed)."""
    if not saved.exists():
        return
    before, now = SiteSpec.load(saved).policy.privacy.describe(), spec.policy.privacy.describe()
    if before != now:
        log.warning("%s: its policy is this start's flags, not the last start's: was %s; now %s (give the "
                    "flags again to keep what it was)", spec.name, before, now)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _last_line(path: Path) -> str:
    """The log's last message (from its last 64 KiB): indented lines (a warning's source line, a
    traceback's frames) are what the line above them is about."""
    text = ""
    if path.exists():
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 65536))
            text = f.read().decode(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln[0].isspace()]
    return lines[-1].strip()[:300] if lines else "no output"


def _exit_reason(code: int) -> str:
    """A process's exit status as a person reads it: "exit code 1", "killed by SIGKILL"."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


