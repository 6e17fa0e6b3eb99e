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
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from tqdm import tqdm

from fl_syft.common.errors import ConfigError
from fl_syft.common.files import write_json, write_private
from fl_syft.common.partition import PartitionSpec
from fl_syft.owner.audit import AuditLog
from fl_syft.owner.datasite import SiteSpec
from fl_syft.owner.ledger import SITE_LINK, LedgerStore
from fl_syft.owner.policy import OwnerPolicy
from fl_syft.owner.provision import (
    LaunchError,
    check_ledgers,
    held_rows,
    note_kept_budget,
    reset_budget,
    resolve_secrets,
    site_identity,
)
from fl_syft.owner.state import StateLock, StateLocked, holder, make_private

log = logging.getLogger("fl_syft.launch")

ADMIN_EMAIL = "owner@fl-syft.example.com"
DS_EMAIL = "scientist@fl-syft.example.com"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT = 300.0  # a cold start computes each shard's scattering features (~1 ms a row)
# Our own datasites are never behind a proxy; urlopen's global opener would honour (and
# cache) http_proxy and send the readiness probe there.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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
        check_ledgers(self.state, [setup.name for setup in setups], held, opts.policy, opts.reset_privacy_budget)
        for setup in setups:
            if setup.db_url:
                ensure_database(setup.db_url)
        # Validated: from here on the state directory is written.
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
        policy = opts.policy.with_peers({**keys, **opts.policy.privacy.peers})
        for setup in setups:
            site_dir = self.state / setup.name
            spec = SiteSpec(name=setup.name, host=opts.host, port=setup.port, state_dir=str(site_dir),
                            admin_email=ADMIN_EMAIL, admin_password=pw["admin_password"], ds_email=DS_EMAIL,
                            ds_password=pw["ds_password"], fresh=not opts.keep, db_url=setup.db_url,
                            policy=policy)
            self.specs[setup.name] = spec
            (site_dir / "status.json").unlink(missing_ok=True)
            spec.save(site_dir / "spec.json")
            self.procs[setup.name] = self._spawn(spec)
        if while_starting:
            while_starting()
        table = self._wait_ready()
        write_json(self.connection_file, {"datasites": [
            {"name": s.name, "url": f"http://{_client_host(s.host)}", "port": s.port, "ds_email": s.ds_email}
            for s in self.specs.values()]})
        return table

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
                while not _answers(spec):
                    code = self.procs[name].poll()
                    if code is not None:
                        raise LaunchError(f"{name} exited during start-up (code {code}): "
                                          f"{_last_line(spec.dir / 'site.log')} (log: {spec.dir / 'site.log'})")
                    if time.monotonic() > deadline:
                        raise LaunchError(f"{name} did not answer within {START_TIMEOUT:.0f} s (last log line: "
                                          f"{_last_line(spec.dir / 'site.log')}); see {spec.dir / 'site.log'}")
                    time.sleep(0.2)
                status = json.loads((spec.dir / "status.json").read_text())
                table.append({"name": name, "url": f"http://{spec.host}:{spec.port}", "rows": status["rows"],
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
        """Block until SIGINT/SIGTERM, reporting any site that stops on its own."""
        for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background job starts with it ignored
            signal.signal(sig, _raise_interrupt)
        reported: set[str] = set()
        try:
            while True:
                for name, proc in self.procs.items():
                    if proc.poll() is not None and name not in reported:
                        reported.add(name)
                        log.error("%s stopped unexpectedly (exit code %s); the other sites keep running; "
                                  "log: %s", name, proc.returncode, self.specs[name].dir / "site.log")
                time.sleep(0.5)
        except KeyboardInterrupt:
            log.info("stopping datasites")


def check_port_free(host: str, port: int, port_field: str = "port") -> None:
    """Raise LaunchError if ``port`` cannot be bound on ``host`` (PySyft would not notice)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise LaunchError(f"port {port} on {host} is already in use ({e.strerror}): stop what runs "
                              f"there or choose another {{{port_field}}}") from None


def free_base_port(n: int, host: str = "127.0.0.1") -> int:
    """A base port with ``n`` consecutive ports that pass :func:`check_port_free` now (another
    process may still take one before we bind); for runs beside other servers (tests, benchmarks)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        try:
            for port in range(base, base + n):
                check_port_free(host, port)
            return base
        except LaunchError:
            continue
    raise LaunchError(f"no {n} consecutive free ports found on {host}")


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


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _answers(spec: SiteSpec) -> bool:
    """True once the site's status file exists and its API reports the expected name."""
    if not (spec.dir / "status.json").exists():
        return False
    try:
        url = f"http://{_client_host(spec.host)}:{spec.port}/api/v2/metadata"
        with _DIRECT.open(url, timeout=2) as r:
            name = json.load(r).get("name")
    except (OSError, ValueError):
        return False
    if name != spec.name:
        raise LaunchError(f"port {spec.port} answers as {name!r}, not {spec.name!r}: another server took it")
    return True


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "localhost") else host


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
    return lines[-1].strip()[:300] if lines else "no output"


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def reachable_hosts(host: str) -> list[str]:
    """The addresses a data scientist can use for a site bound to ``host``: every interface's
    address for a wildcard bind (others' first, loopback last), else ``host`` itself."""
    if host not in ("0.0.0.0", "::", ""):
        return [host]
    import psutil

    family = socket.AF_INET6 if host == "::" else socket.AF_INET
    found = [a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
             if a.family == family and not a.address.startswith("fe80")]  # link-local: needs a zone
    found = [f"[{a}]" if ":" in a else a for a in found]
    return sorted(dict.fromkeys(found), key=lambda a: a.startswith(("127.", "[::1]"))) or ["127.0.0.1"]


def print_table(rows: list[dict], connection_file: Path, host: str = "127.0.0.1") -> list[str]:
    """Print each site's name, URL and rows; return the URLs a scientist can use for the first site.
    A wildcard ``host`` is shown as the machine's addresses (0.0.0.0 is not one to connect to)."""
    hosts = reachable_hosts(host)
    urls = {r["name"]: [f"http://{h}:{r['url'].rsplit(':', 1)[1]}" for h in hosts] for r in rows}
    width = max(len(u[0]) for u in urls.values())
    print(f"{'name':<10} {'url':<{width}} {'rows':>7}")
    for r in rows:
        print(f"{r['name']:<10} {urls[r['name']][0]:<{width}} {r['rows']:>7}")
    if len(hosts) > 1:
        print(f"also reachable at: {', '.join(hosts[1:])} (same ports)")
    for line in dict.fromkeys(r["privacy"] for r in rows):  # one line per distinct policy
        print(f"privacy ({', '.join(r['name'] for r in rows if r['privacy'] == line)}): {line}")
    print(f"connection file: {connection_file}")
    return urls[rows[0]["name"]]
