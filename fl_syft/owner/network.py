"""Where a deployment's sites listen and how they are reached: ports, hosts, TLS or not, the
readiness probe and the table the owner sees (used by ``owner.launch``)."""

from __future__ import annotations

import json
import random
import socket
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from fl_syft.common.errors import ConfigError
from fl_syft.owner.datasite import SiteSpec
from fl_syft.owner.provision import LaunchError
from fl_syft.owner.tls import pinned_get

if TYPE_CHECKING:
    from fl_syft.owner.launch import DeploymentOptions

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Our own datasites are never behind a proxy; urlopen's global opener would honour (and
# cache) http_proxy and send the readiness probe there.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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


def answers(spec: SiteSpec) -> bool:
    """True once the site's status file exists and its API reports the expected name."""
    if not (spec.dir / "status.json").exists():
        return False
    try:
        if spec.tls_fingerprint:  # our own certificate, pinned like a scientist pins it
            body = pinned_get(client_host(spec.host), spec.port, "/api/v2/metadata", spec.tls_fingerprint)
        else:
            with _DIRECT.open(f"http://{client_host(spec.host)}:{spec.port}/api/v2/metadata", timeout=2) as r:
                body = r.read()
        name = json.loads(body).get("name")
    except (OSError, ValueError):
        return False
    if name != spec.name:
        raise LaunchError(f"port {spec.port} answers as {name!r}, not {spec.name!r}: another server took it")
    return True


def client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "localhost") else host


def serves_tls(opts: DeploymentOptions) -> bool:
    """TLS unless the owner asks for plain HTTP: always for ``serve`` (other machines' scientists),
    for the launcher only off loopback (on loopback no one can read the traffic but this machine)."""
    return bool(opts.tls_cert) or (not opts.insecure_http and (opts.command == "serve" or opts.host not in LOOPBACK))


def check_tls(opts: DeploymentOptions) -> None:
    """ConfigError for TLS settings that contradict each other."""
    if bool(opts.tls_cert) != bool(opts.tls_key):
        raise ConfigError("{tls_cert} and {tls_key} go together: give both, or neither for a self-signed certificate")
    if opts.tls_cert and opts.insecure_http:
        raise ConfigError("{insecure_http} serves no TLS: drop it, or drop {tls_cert} and {tls_key}")


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
    urls = {r["name"]: [f"{r['url'].split(':')[0]}://{h}:{r['url'].rsplit(':', 1)[1]}" for h in hosts] for r in rows}
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
