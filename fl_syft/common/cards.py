"""A site's card and its invite: what a data owner sends out of band so others can reach the site.

The **card** is public: the site's name, its ``https://`` URL, the SHA-256 fingerprint of its TLS
certificate (what a client pins instead of trusting any certificate authority) and its
datasite's verify key (what secure aggregation checks its round keys' signatures against).
Other owners put it in their ``serve --peers``. The **invite** is the card plus one data
scientist's login (email and password) and goes to that scientist only: ``fl-syft run
--invite FILE``. ``serve`` writes both into its state directory (``card.json``,
``invite.json``, owner-only); both are checked here on either side.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fl_syft.common.errors import ConfigError

CARD_KIND, INVITE_KIND = "fl-syft site card", "fl-syft invite"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def normal_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as 64 lowercase hex digits (colons, spaces and a ``sha256:`` prefix dropped)."""
    value = text.lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    if not _HEX64.match(value):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return value


@dataclass(frozen=True)
class Card:
    """A site's public card. ``fingerprint`` is "" for a plain-HTTP site (``--insecure-http``)."""

    name: str
    url: str  # scheme://host:port
    fingerprint: str
    verify_key: str  # 64 hex digits: the datasite's ed25519 verify key

    @property
    def host_port(self) -> tuple[str, str, int]:
        """(scheme, host, port) of :attr:`url`."""
        parts = urlsplit(self.url)
        return parts.scheme, parts.hostname or "", parts.port or 0

    def to_dict(self) -> dict:
        return {"kind": CARD_KIND, **asdict(self)}


@dataclass(frozen=True)
class Invite:
    """One scientist's invite to one site: its card and that scientist's login."""

    card: Card
    email: str
    password: str = field(repr=False)

    def to_dict(self) -> dict:
        return {"kind": INVITE_KIND, **asdict(self.card), "email": self.email, "password": self.password}


def card_from(doc: object, where: str) -> Card:
    """The :class:`Card` in ``doc`` (a card's or an invite's JSON object); ConfigError naming ``where``."""
    if not isinstance(doc, dict) or doc.get("kind") not in (CARD_KIND, INVITE_KIND):
        raise ConfigError(f"{where} is not an fl-syft site card or invite (no \"kind\": \"{CARD_KIND}\"): "
                          "use the card.json or invite.json the site's fl-syft serve wrote")
    try:
        card = Card(str(doc["name"]), str(doc["url"]), str(doc["fingerprint"]), str(doc["verify_key"]))
    except KeyError as e:
        raise ConfigError(f"{where} lacks {e.args[0]!r}: ask the site's owner for its file again") from None
    scheme, host, port = _parts(card.url, where)
    if scheme == "https":
        try:
            card = Card(card.name, card.url, normal_fingerprint(card.fingerprint), card.verify_key)
        except ValueError as e:
            raise ConfigError(f"{where}: fingerprint {e}") from None
    elif card.fingerprint:
        raise ConfigError(f"{where}: a certificate fingerprint for the plain-HTTP URL {card.url}: "
                          "ask the site's owner for its file again")
    if not _HEX64.match(card.verify_key):
        raise ConfigError(f"{where}: verify_key must be 64 hex digits, as the site's fl-syft serve wrote it")
    return card


def _parts(url: str, where: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port or parts.path not in ("", "/"):
        raise ConfigError(f"{where}: url {url!r} must look like https://HOST:PORT")
    return parts.scheme, parts.hostname, port


def read_json(path: Path, what: str) -> object:
    """The JSON in ``path``; ConfigError naming it (``what``: the flag, for the message)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{what} {path}: not readable JSON ({type(e).__name__}): ask for the file again") from None


def read_invite(path: Path) -> Invite:
    """The invite in ``path`` (``fl-syft run --invite``)."""
    doc = read_json(path, "{invite}")
    card = card_from(doc, f"{{invite}} {path}")
    if doc.get("kind") != INVITE_KIND or not doc.get("email") or not doc.get("password"):
        raise ConfigError(f"{{invite}} {path} is a site card, not an invite (no login in it): use the invite.json "
                          "the site's owner sent you")
    return Invite(card, str(doc["email"]), str(doc["password"]))


def read_cards(path: Path) -> list[Card]:
    """The cards in ``path``: one card (or invite: its login is ignored), a JSON list of them, or
    a directory of such ``*.json`` files (``serve --peers``)."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"{{peers}} {path}: a directory with no *.json cards in it")
    cards = []
    for file in files:
        doc = read_json(file, "{peers}")
        for i, item in enumerate(doc if isinstance(doc, list) else [doc]):
            cards.append(card_from(item, f"{{peers}} {file}" + (f" item {i + 1}" if isinstance(doc, list) else "")))
    names: dict[str, Card] = {}
    for card in cards:
        if card.name in names and names[card.name] != card:
            raise ConfigError(f"{{peers}} {path}: two different cards for {card.name}: keep the right one")
        names[card.name] = card
    return list(names.values())
