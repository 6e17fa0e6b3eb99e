"""What PySyft 0.9.5 does with a request body before it knows the caller, cut to what cannot hurt.

PySyft's deserialiser builds any registered class a body names (pydantic validators, nested
arrays, data frames, typing aliases that called functions: ``syft_patches.typing_aliases_only``)
and reads capnp messages with the traversal limit off (``serde/recursive.py:rs_bytes2object``,
``2**64 - 1``), so a 1 MB body of pointers to one blob expands to as much memory as it likes.
Both happen for ``POST /api_call`` and ``/register`` before any signature or account is looked at.

Here a body sent before login is read as exactly what a caller sends, a ``SignedSyftAPICall``
envelope, field by field: the signer's verify key (32 bytes), the signature and the signed bytes,
each a plain byte string, with a traversal limit proportional to the body (no pointer expands it).
Nothing else in the body is decoded: the signed message (``serialized_message``) is decoded only
once the signature holds and its key is an account of the site (``syft_patches.scientist_api``,
``datasite_guard.secagg_router``); the ``cached_deseralized_message`` a body may carry is never decoded
(``syft_patches.signed_message_only``). The other routes that read bytes are not served
(``owner.exposure``). Test: ``test_exposure.py``.
"""

from __future__ import annotations

from collections.abc import Callable

ENVELOPE = "SignedSyftAPICall"
SIGNED = frozenset({"credentials", "signature", "serialized_message"})
NEVER_DECODED = frozenset({"cached_deseralized_message"})  # see syft_patches.signed_message_only
TRAVERSAL_PER_WORD = 2  # capnp words a read may traverse per word of the body: each field is read once


def read_signed_call(body: bytes):
    """The ``SignedSyftAPICall`` a request body holds, or None if it is anything else (then PySyft's
    route answers "only signed calls are served", ``syft_patches.scientist_api``)."""
    import capnp
    from nacl.signing import VerifyKey
    from syft.client.api import SignedSyftAPICall
    from syft.server.credentials import SyftVerifyKey

    try:
        fields = _fields(body, ENVELOPE)
        if not SIGNED <= set(fields) <= SIGNED | NEVER_DECODED:
            return None
        key = _fields(fields["credentials"], "SyftVerifyKey")
        if set(key) != {"verify_key"}:
            return None
        verify_key = SyftVerifyKey(verify_key=VerifyKey(_blob(key["verify_key"], "nacl_verify_key")))
        return SignedSyftAPICall(credentials=verify_key, signature=_blob(fields["signature"], "bytes"),
                                 serialized_message=_blob(fields["serialized_message"], "bytes"))
    except (capnp.KjException, ValueError, TypeError):  # not capnp, over the traversal limit, a bad key
        return None


def _message(blob: bytes):
    """One of PySyft's serialised objects (a capnp ``RecursiveSerde`` message), to read in a ``with``."""
    from syft.serde.recursive import recursive_scheme

    if type(blob) is not bytes:
        raise TypeError("not bytes")
    return recursive_scheme.from_bytes(blob, traversal_limit_in_words=TRAVERSAL_PER_WORD * len(blob) // 8 + 64)


def _fields(blob: bytes, name: str) -> dict[str, bytes]:
    """The fields of a serialised ``name`` object, each still serialised (nothing decoded)."""
    with _message(blob) as msg:
        _check(msg, name, nonrecursive=False)
        names = list(msg.fieldsName)
        if len(set(names)) != len(names):
            raise ValueError("a field twice")
        return {field: b"".join(chunks) for field, chunks in zip(names, msg.fieldsData, strict=True)}


def _blob(blob: bytes, name: str) -> bytes:
    """The bytes of a serialised ``name`` object that PySyft stores as one blob (bytes, a key)."""
    with _message(blob) as msg:
        _check(msg, name, nonrecursive=True)
        return b"".join(msg.nonrecursiveBlob)


def _check(msg, name: str, nonrecursive: bool) -> None:
    if msg.canonicalName != name or msg.version != 1:
        raise ValueError(f"not a {name}")
    if nonrecursive == (len(msg.fieldsName) > 0 or len(msg.fieldsData) > 0):
        raise ValueError(f"not a {name}")


def signed_envelopes_only() -> None:
    """PySyft's routes read a request body with :func:`read_signed_call` instead of its deserialiser
    (``syft.server.routes`` uses it for ``/api_call``, and for ``/register``, which is not served)."""
    from syft.server import routes

    def envelope(blob: bytes, from_bytes: bool = True):
        return read_signed_call(blob)

    routes.deserialize = envelope


DECODE_TRAVERSAL_PER_WORD = 8  # a legitimate message is read about once; pointers to one blob repeat it


def bounded_decoding() -> None:
    """Every message the site decodes, a logged-in account's too, may traverse at most
    ``DECODE_TRAVERSAL_PER_WORD`` times its own size, and chunked bytes are joined once. PySyft's
    decoder has the limit off and joins chunks in quadratic time: one scientist's call of 0.27 MB
    (pointers to one blob) cost the site 36 s of a core and 335 MB."""
    from syft.serde import recursive, recursive_primitives

    def rs_bytes2object(blob: bytes):
        limit = DECODE_TRAVERSAL_PER_WORD * len(blob) // 8 + 1024
        with recursive.recursive_scheme.from_bytes(blob, traversal_limit_in_words=limit) as msg:
            return recursive.rs_proto2object(msg)

    def combine_bytes(chunks: list[bytes]) -> bytes:
        return b"".join(chunks)

    recursive.rs_bytes2object = rs_bytes2object  # (``serde.deserialize`` looks it up at each call)
    recursive.combine_bytes = recursive_primitives.combine_bytes = combine_bytes


def on_login(server, succeeded: Callable[[str], None]) -> None:
    """Call ``succeeded(verify key hex)`` (in the login request's context) whenever PySyft's
    ``/login`` exchanges a password for the account's key (``UserService.exchange_credentials``;
    a wrong password raises)."""
    users = server.services.user
    exchange = users.exchange_credentials

    def exchanged(context):
        result = exchange(context=context)
        succeeded(str(result.value.signing_key.verify_key))
        return result

    users.exchange_credentials = exchanged
