"""The site's TLS certificate: self-signed and generated in its state directory, or the owner's own.

Clients pin the certificate by its SHA-256 fingerprint (sent in the site's card and invites),
so no certificate authority is involved and a self-signed one is as good as a bought one: what
matters is that the scientist got the fingerprint from the owner, out of band. PySyft 0.9.5
leaves TLS to a reverse proxy; fl-syft's datasite serves it with uvicorn itself.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from fl_syft.common.errors import ConfigError
from fl_syft.common.files import write_private

CERT, KEY = "tls-cert.pem", "tls-key.pem"
# Pinned by fingerprint, so expiry protects nothing here; a fresh start makes a new one.
VALID_DAYS = 3650


@dataclass(frozen=True)
class TlsFiles:
    """The certificate and key a site serves, and the certificate's SHA-256 fingerprint (hex)."""

    cert: Path
    key: Path
    fingerprint: str


def site_certificate(site_dir: Path, name: str, hosts: list[str], fresh: bool,
                     own: tuple[Path, Path] | None = None) -> TlsFiles:
    """The site's certificate: the owner's ``own`` (cert, key) PEM files, checked to belong
    together; else the one in ``site_dir`` (made on a fresh start or when missing: ECDSA P-256,
    subject ``name``, the ``hosts`` as subject alternative names)."""
    if own is not None:
        cert, key = (Path(p).resolve() for p in own)
        check_pair(cert, key)
        return TlsFiles(cert, key, fingerprint_of(cert))
    cert, key = site_dir / CERT, site_dir / KEY
    if fresh or not (cert.exists() and key.exists()):
        cert_pem, key_pem = _self_signed(name, hosts)
        write_private(key, key_pem)
        write_private(cert, cert_pem)
    return TlsFiles(cert, key, fingerprint_of(cert))


def check_pair(cert: Path, key: Path) -> None:
    """ConfigError unless ``cert`` and ``key`` are readable PEM files of one key pair."""
    for flag, path in (("{tls_cert}", cert), ("{tls_key}", key)):
        if not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{{tls_cert}} {cert} and {{tls_key}} {key} are not a PEM certificate and its "
                          f"unencrypted private key ({e.__class__.__name__}: {e.args[-1]})") from None


def fingerprint_of(cert: Path) -> str:
    """SHA-256 (hex) of the first certificate in the PEM file ``cert``, in DER form (what a client sees)."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


def pinned_get(host: str, port: int, path: str, fingerprint: str, timeout: float = 2.0) -> bytes:
    """GET ``path`` over TLS from ``host:port`` if its certificate's SHA-256 is ``fingerprint``
    (OSError otherwise: the probe of a site's own start, which must not talk to another server)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the fingerprint is the check
    connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        connection.connect()
        seen = hashlib.sha256(connection.sock.getpeercert(binary_form=True)).hexdigest()
        if seen != fingerprint:
            raise ssl.SSLError(f"{host}:{port} presents another certificate (SHA-256 {seen[:16]}...)")
        connection.request("GET", path)
        return connection.getresponse().read()
    finally:
        connection.close()


def _self_signed(name: str, hosts: list[str]) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    alt: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in dict.fromkeys(h.strip("[]") for h in hosts):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
