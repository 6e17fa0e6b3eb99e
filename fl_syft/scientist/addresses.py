"""Where the sites are and how to log in (data scientist side): the launcher's connection file,
explicit ``--datasite`` URLs, or the invites their owners sent (``common.cards``); and the
scientist's password for each (never saved with a run)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fl_syft.common.errors import ConfigError, FlSyftError

DS_PASSWORD_ENV = "FL_SYFT_DS_PASSWORD"


class ConnectError(FlSyftError):
    """A datasite cannot be used; the message names the site and what to do."""


@dataclass(frozen=True)
class SiteAddress:
    """Where a site is and how to log in (saved with a run, so never its password)."""

    name: str  # "" = accept whatever name the server reports
    url: str  # e.g. http://127.0.0.1 or https://hospital-a.example.org
    port: int
    email: str
    fingerprint: str = ""  # SHA-256 of the site's TLS certificate (https: the only one accepted)
    invite: str = ""  # the invite file the address (and its password) came from

    @property
    def label(self) -> str:
        return self.name or "the datasite"


def read_connection(path: Path) -> list[SiteAddress]:
    """Site addresses from the launcher's ``datasites.json``."""
    if not path.exists():
        raise ConnectError(f"connection file {path} not found: start the datasites first "
                           "(python launch_datasites.py) or pass --connection")
    try:
        doc = json.loads(path.read_text())
        sites = [SiteAddress(s["name"], s["url"], int(s["port"]), s["ds_email"], s.get("fingerprint", ""))
                 for s in doc["datasites"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ConnectError(f"connection file {path} is malformed ({type(e).__name__}: {e}); "
                           "restart the launcher to rewrite it") from None
    if not sites:
        raise ConnectError(f"connection file {path} lists no datasites")
    return sites


def url_address(url: str, email: str) -> SiteAddress:
    """A SiteAddress for ``http://HOST:PORT`` (the site's name is taken from the server)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        raise ConfigError(f"{{datasite}} {url!r} must look like http://HOST:PORT")
    if parts.scheme == "https":
        raise ConfigError(f"{{datasite}} {url}: an HTTPS site is reached with its invite ({{invite}} FILE from its "
                          "owner), which pins its certificate")
    return SiteAddress(name="", url=f"{parts.scheme}://{parts.hostname.lower()}", port=port, email=email)


def invite_addresses(paths: list[Path]) -> list[SiteAddress]:
    """The sites of these invites (``common.cards``); one site invited twice is refused."""
    from fl_syft.common.cards import read_invite

    addresses, seen = [], {}
    for path in paths:
        invite = read_invite(path)
        scheme, host, port = invite.card.host_port
        for key in (invite.card.name, (host.lower(), port)):  # one name, and one address, per site
            if key in seen:
                raise ConfigError(f"{{invite}} {path} and {seen[key]} both invite to "
                                  f"{key if isinstance(key, str) else f'{scheme}://{host}:{port}'}: give each "
                                  "site once (an invite naming another site's address is not that site's)")
            seen[key] = path
        addresses.append(SiteAddress(invite.card.name, f"{scheme}://{host}", port, invite.email,
                                     invite.card.fingerprint, str(Path(path).resolve())))
    return addresses


def url_addresses(urls: list[str], email: str) -> list[SiteAddress]:
    """:func:`url_address` of each URL; one given twice is refused (it would be called twice a round).
    (Two URLs of one server are caught after login, by the server's id: see :func:`connect`.)"""
    addresses = [url_address(url, email) for url in urls]
    seen: dict[tuple[str, int], str] = {}
    for url, address in zip(urls, addresses, strict=True):
        key = (address.url, address.port)
        if key in seen:
            raise ConfigError(f"{{datasite}} {url} is given twice (also as {seen[key]}): give each datasite once")
        seen[key] = url
    return addresses


@dataclass(frozen=True)
class Password:
    """The scientist's password and where it came from (named when a login fails; never printed)."""

    value: str = field(repr=False)
    source: str  # "FL_SYFT_DS_PASSWORD", the secrets.json path or the invite's
    invite: bool = False

    def hint(self) -> str:
        if self.invite:
            return f"the password in the invite {self.source} is not the site's (ask its owner for a new invite)"
        if self.source == DS_PASSWORD_ENV:
            return f"{DS_PASSWORD_ENV} does not match this datasite's password for you (ask its data owner)"
        return (f"the ds_password in {self.source} does not match (was the site restarted with another "
                f"{DS_PASSWORD_ENV}?): set {DS_PASSWORD_ENV} to the right one")


def ds_password(connection_file: Path | None) -> Password:
    """The scientist's password: $FL_SYFT_DS_PASSWORD, else ``secrets.json`` beside the launcher's
    connection file (same machine); with explicit ``--datasite`` addresses, only the variable."""
    if os.environ.get(DS_PASSWORD_ENV):
        return Password(os.environ[DS_PASSWORD_ENV], DS_PASSWORD_ENV)
    secrets = connection_file.parent / "secrets.json" if connection_file else None
    if secrets and secrets.exists():
        return Password(json.loads(secrets.read_text())["ds_password"], str(secrets))
    if connection_file is None:
        raise ConnectError(f"no password: set {DS_PASSWORD_ENV} to the password the data owners gave you")
    raise ConnectError(f"no password: set {DS_PASSWORD_ENV}, or keep the launcher's secrets.json beside "
                       f"{connection_file}")


def password_for(address: SiteAddress, default: Password | None) -> Password:
    """The scientist's password for ``address``: its invite's, else ``default`` (one for all sites)."""
    if address.invite:
        from fl_syft.common.cards import read_invite

        return Password(read_invite(Path(address.invite)).password, address.invite, invite=True)
    if default is None:
        raise ConnectError(f"no password for {address.label}: set {DS_PASSWORD_ENV} or use its invite")
    return default
