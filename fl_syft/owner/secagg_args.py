"""What a site's secure-aggregation side accepts as arguments, checked before any state changes.

Every argument of a protocol step and of a call's ``config["secagg"]`` comes from the data
scientist: exact types, names among the policy's peers, sane sizes, or a one-line
:class:`SecAggRefused` (no round is burned, nothing is written).
"""

from __future__ import annotations

import re

import numpy as np

from fl_syft.common import secagg
from fl_syft.common.errors import FlSyftError

SECURE_KEYS = ("session", "rnd", "peers", "shares", "fields", "weight")  # a call's config["secagg"]
FIELDS = ("coef", "intercept", "velocity_coef", "velocity_intercept", "n_samples")  # a vetted result's
MAX_ROUND = 2 ** 31
MAX_NAME = 128
KEY_BYTES, SIGNATURE_BYTES = 32, 64
SEALED_BYTES = (12 + 16 + 1, 1024)  # nonce + tag + a share of a few hundred bytes
MAX_LENGTH = 10 ** 7  # entries of a masked update
_HEX = re.compile(r"[0-9a-f]+")
_ADVERT_KEYS = {"site", "c_pk", "s_pk", "signature"}


class SecAggRefused(FlSyftError):
    """This site will not take this secure-aggregation step; the message says why."""


def refuse(message: str):
    raise SecAggRefused(message)


def check_session(value: object) -> str:
    if type(value) is not str or not 1 <= len(value) <= 64 or not _HEX.fullmatch(value):
        refuse(f"session must be 1 to 64 lowercase hex characters, got {show(value)}")
    return value


def check_rnd(value: object) -> int:
    if type(value) is not int or not 0 <= value < MAX_ROUND:
        refuse(f"rnd must be an int in [0, 2**31), got {show(value)}")
    return value


def check_name(value: object, what: str, known: dict | None) -> str:
    if type(value) is not str or not 1 <= len(value) <= MAX_NAME:
        refuse(f"{what} must name sites (strings), got {show(value)}")
    if known is not None and value not in known:
        refuse(f"{what}: {show(value)} is not a peer in this site's policy")
    return value


def check_names(value: object, what: str, known: dict | None) -> list[str]:
    """A list of distinct site names (each a peer in ``known`` if given), sorted."""
    if type(value) is not list:
        refuse(f"{what} must be a list of site names, got {type(value).__name__}")
    names = [check_name(v, what, known) for v in value]
    if len(set(names)) != len(names):
        refuse(f"{what} names a site twice")
    return sorted(names)


def check_bytes(value: object, what: str, low: int, high: int) -> bytes:
    if type(value) is not bytes or not low <= len(value) <= high:
        size = f"{low}" if low == high else f"{low} to {high}"
        refuse(f"{what} must be {size} bytes, got {show(value)}")
    return value


def check_hex(value: object, what: str, low: int, high: int) -> str:
    if type(value) is not str or not low <= len(value) <= high or not _HEX.fullmatch(value):
        refuse(f"{what} must be {low} to {high} lowercase hex characters, got {show(value)}")
    return value


def check_by_site(value: object, what: str, known: dict, check) -> dict:
    """A dict site name -> ``check(value, label)`` for peers in ``known``."""
    if type(value) is not dict:
        refuse(f"{what} must be a dict of site name -> value, got {type(value).__name__}")
    return {check_name(k, what, known): check(v, f"{what}[{k}]") for k, v in value.items()}


def check_advert(value: object, what: str) -> dict:
    if type(value) is not dict or set(value) != _ADVERT_KEYS:
        refuse(f"{what} must be a dict of exactly {sorted(_ADVERT_KEYS)}")
    return {"site": check_name(value["site"], f"{what} site", None),
            "c_pk": check_bytes(value["c_pk"], f"{what} c_pk", KEY_BYTES, KEY_BYTES),
            "s_pk": check_bytes(value["s_pk"], f"{what} s_pk", KEY_BYTES, KEY_BYTES),
            "signature": check_bytes(value["signature"], f"{what} signature", SIGNATURE_BYTES, SIGNATURE_BYTES)}


def check_update(value: object) -> np.ndarray:
    """The vector to mask: its type and shape are checked, never its values (see ``quantize``)."""
    if type(value) is not np.ndarray or value.ndim != 1 or value.dtype.kind not in "fiu" \
            or not 1 <= len(value) <= MAX_LENGTH:
        refuse("the update to mask must be a 1-D numeric numpy array of 1 to 10**7 entries")
    return value


def show(value: object) -> str:
    text = repr(value) if type(value) in (str, int, float, bool, type(None)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def parse_secure(secure: object) -> dict:
    """A call's ``config["secagg"]``, checked and normalised (peers sorted); SecAggRefused (one line)
    unless it is exactly {session, rnd, peers, shares, fields, weight} of the right types: fields a
    list of distinct result fields a vetted function returns (FIELDS), weight None or one of
    ``common.secagg.WEIGHTS``. Whether the peers are this site's is checked by :meth:`SecAggSite.mask`."""
    if type(secure) is not dict or set(secure) != set(SECURE_KEYS):
        got = ", ".join(sorted(map(show, secure))) if type(secure) is dict else type(secure).__name__
        refuse(f"config secagg must hold exactly {', '.join(SECURE_KEYS)} (got {got or 'nothing'})")
    fields = secure["fields"]
    if type(fields) is not list or not fields or any(type(f) is not str or f not in FIELDS for f in fields) \
            or len(set(fields)) != len(fields):
        refuse(f"config secagg fields must be a non-empty list of distinct fields among {', '.join(FIELDS)}")
    weight = secure["weight"]
    if weight is not None and (type(weight) is not str or weight not in secagg.WEIGHTS):
        refuse(f"config secagg weight must be None or one of {', '.join(secagg.WEIGHTS)}, got {show(weight)}")
    return {"session": check_session(secure["session"]), "rnd": check_rnd(secure["rnd"]),
            "peers": check_names(secure["peers"], "config secagg peers", None),
            "shares": check_by_site(secure["shares"], "config secagg shares", None,
                                    lambda v, what: check_bytes(v, what, *SEALED_BYTES)),
            "fields": list(fields), "weight": weight}
