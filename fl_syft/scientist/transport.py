"""How this process talks to sites: pinned certificates over HTTPS, and no request without a timeout.

A site's invite carries the SHA-256 fingerprint of its TLS certificate; a connection to that
site is accepted only if the certificate it presents has that fingerprint (urllib3's
``assert_fingerprint``), whoever signed it: no certificate authority is trusted, and a
self-signed certificate the owner generated is as good as any. PySyft 0.9.5 sends its
requests through ``requests`` (its session, and plain ``requests.post``/``get`` for API calls
and blobs), so the pin is applied where every ``requests`` adapter picks its connection pool:
one process-wide hook, for pinned ``host:port`` pairs only. The same hook gives every request
a timeout (PySyft sends its API calls with none: a site whose link went down mid-call would
hold the run until TCP gave up, ~15 minutes).
"""

from __future__ import annotations

import re
import threading

from requests.adapters import HTTPAdapter

_PINS: dict[tuple[str, int], str] = {}
_LOCK = threading.Lock()
_ORIGINAL = HTTPAdapter.build_connection_pool_key_attributes, HTTPAdapter.cert_verify, HTTPAdapter.send
CONNECT_TIMEOUT = 10.0  # seconds to open a connection (a reachable site takes milliseconds)
_READ_TIMEOUT = [300.0]  # seconds for a site to answer one request (``set_timeout``)


def set_timeout(seconds: float) -> None:
    """Every request of this process without its own timeout fails after ``seconds`` of silence."""
    with _LOCK:
        _READ_TIMEOUT[0] = float(seconds)
        HTTPAdapter.send = _timed_send


def _timed_send(self: HTTPAdapter, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
    if timeout is None:
        timeout = (min(CONNECT_TIMEOUT, _READ_TIMEOUT[0]), _READ_TIMEOUT[0])
    return _ORIGINAL[2](self, request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)


def pin(host: str, port: int, fingerprint: str) -> None:
    """Accept ``https://host:port`` only with the certificate whose SHA-256 (hex) is ``fingerprint``."""
    with _LOCK:
        if HTTPAdapter.build_connection_pool_key_attributes is _ORIGINAL[0]:
            HTTPAdapter.build_connection_pool_key_attributes = _pinned_pool
            HTTPAdapter.cert_verify = _pinned_verify
            _keep_https_ports()
        # The latest login's pin (a run's invites name each address once: ``addresses.invite_addresses``).
        _PINS[(host.lower().strip("[]"), int(port))] = fingerprint


def _pinned_pool(self: HTTPAdapter, request, verify, cert=None):
    host_params, pool_kwargs = _ORIGINAL[0](self, request, verify, cert)
    if host_params.get("scheme") == "https":
        fingerprint = _PINS.get((str(host_params["host"]).lower().strip("[]"), int(host_params["port"] or 443)))
        if fingerprint:  # the fingerprint is the check: no CA, no host name (the owner chose the name)
            pool_kwargs = {"cert_reqs": "CERT_NONE", "assert_fingerprint": fingerprint}
    return host_params, pool_kwargs


def _pinned_verify(self: HTTPAdapter, conn, url, verify, cert) -> None:
    _ORIGINAL[1](self, conn, url, verify, cert)
    if getattr(conn, "assert_fingerprint", None):  # (requests would ask for a CA-signed certificate again)
        conn.cert_reqs, conn.ca_certs, conn.ca_cert_dir = "CERT_NONE", None, None


def _keep_https_ports() -> None:
    """PySyft 0.9.5's ``ServerURL.from_url`` gives every ``https://`` URL port 443, dropping the
    one it names (and it re-parses a client's URL from text): keep an explicit port."""
    from urllib.parse import urlsplit

    from syft.types.server_url import ServerURL

    parse = ServerURL.from_url.__func__

    def from_url(cls, url):
        parsed = parse(cls, url)
        if isinstance(url, str) and url.startswith("https://") and urlsplit(url).port:
            parsed.set_port(urlsplit(url).port)
        return parsed

    ServerURL.from_url = classmethod(from_url)


def mismatch(error: BaseException) -> str | None:
    """The fingerprint a server presented instead of the pinned one, if ``error`` says so (urllib3)."""
    found = re.search(r"Fingerprints did not match\. Expected \"?([0-9a-f]+)\"?, got \"?([0-9a-f]+)", str(error))
    return found.group(2) if found else None
