"""Secure aggregation (Bonawitz et al. 2017): the arithmetic both sides must agree on.

Each site masks its update x_u (a float vector, fixed-point in Z mod 2^64) as
``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)``: ``b_u`` a fresh
self-mask seed, ``s_uv`` a seed both u and v derive by X25519 key agreement, bound to the
session, the round and the hash of the global model u received. The pairwise masks cancel
in the sum; the self-masks and a dropped site's pairwise masks are removed with Shamir
shares (threshold t) of ``b_u`` and of the dropped site's key-agreement secret.
Primitives come from maintained libraries: ``cryptography`` (X25519, HKDF-SHA256,
ChaCha20 as the mask generator, ChaCha20-Poly1305 for the shares in transit) and
``pycryptodome`` (Shamir secret sharing over GF(2^128)); this module only composes them.

Fixed point: 2^-24 resolution; a sum stays exact while its absolute value is below 2^63 / 2^24 = 2^39
(about 5.5e11): :func:`quantize` clamps each site's values so that the sum of all its peers' cannot
pass that.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

SCALE_BITS = 24
LIMIT = 2.0 ** 39  # |any summed value| must stay below this (2^63 / 2^24); quantize keeps it under 2^38


def quantize(x: np.ndarray, parties: int) -> np.ndarray:
    """Floats -> uint64 fixed point (two's complement, mod 2^64), for a sum over at most ``parties``
    sites. Total and deterministic: it never refuses (a refusal on values would be an outcome that
    depends on the private rows): a non-finite value becomes 0 and every value is clamped into
    +-2^38 / parties, so the sum of ``parties`` of them stays within +-2^38 (< 2^39) and never wraps.

    Under the guard's bounds clamping does not trigger in practice: what is summed is model entries
    and step directions (the guard keeps a received model within the owner's ``model_bound``,
    default 1e4) weighted by at most the site's rows (MNIST: at most 6e4), plus DP noise of std
    noise_multiplier * clip: with the defaults below about 1e9, while 2^38 / parties is 5.5e10 for
    5 sites and 2.7e9 for 100. Should an absurd value reach it, the clamp is a fixed function of
    that value (the same input always gives the same output; no randomness, no refusal)."""
    if isinstance(parties, bool) or not isinstance(parties, int) or parties < 1:
        raise TypeError(f"parties must be a positive int, got {parties!r}")
    x = np.nan_to_num(np.asarray(x, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    bound = 2.0 ** 38 / parties
    return np.round(np.clip(x, -bound, bound) * 2.0 ** SCALE_BITS).astype(np.int64).view(np.uint64)


def dequantize(v: np.ndarray) -> np.ndarray:
    """uint64 fixed point (mod 2^64) -> floats."""
    return np.asarray(v, np.uint64).view(np.int64).astype(np.float64) / 2.0 ** SCALE_BITS


def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random uint64 from a 32-byte seed (the ChaCha20 keystream)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    stream = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(stream.update(b"\0" * (8 * length)), dtype=np.uint64).copy()


def derive(secret: bytes, purpose: str, *context: object) -> bytes:
    """A 32-byte key for ``purpose`` from ``secret``, bound to ``context`` (HKDF-SHA256)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = json.dumps(["fl-syft secagg", purpose, *map(str, context)]).encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def keypair() -> tuple[bytes, bytes]:
    """(secret, public) raw X25519 keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    secret = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    return (secret.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
            secret.public_key().public_bytes(raw, serialization.PublicFormat.Raw))


def agree(secret: bytes, public: bytes) -> bytes:
    """The X25519 shared secret of our ``secret`` and their ``public`` key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    return X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(public))


def pair_mask(secret: bytes, their_public: bytes, session: str, rnd: int, model: str, a: str, b: str,
              length: int) -> np.ndarray:
    """The mask sites ``a`` and ``b`` share in this round for this model (same for both ends)."""
    low, high = sorted((a, b))
    return prg(derive(agree(secret, their_public), "mask", session, rnd, model, low, high), length)


def signed_mask(me: str, peer: str, mask: np.ndarray) -> np.ndarray:
    """+mask for the lower name of the pair, -mask (mod 2^64) for the higher: they cancel in the sum."""
    return mask if me < peer else (np.uint64(0) - mask)


def seal(key_secret: bytes, their_public: bytes, context: tuple, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` to the peer (ChaCha20-Poly1305 under an X25519-derived key)."""
    import os

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    nonce = os.urandom(12)
    key = derive(agree(key_secret, their_public), "share", *context)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, json.dumps(list(map(str, context))).encode())


def open_sealed(key_secret: bytes, their_public: bytes, context: tuple, sealed: bytes) -> bytes:
    """Decrypt what :func:`seal` made for us; raises ``cryptography.exceptions.InvalidTag`` if tampered."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    key = derive(agree(key_secret, their_public), "share", *context)
    return ChaCha20Poly1305(key).decrypt(sealed[:12], sealed[12:], json.dumps(list(map(str, context))).encode())


def split(secret: bytes, n: int, t: int) -> list[tuple[int, bytes]]:
    """Shamir shares (index 1..n, 32 bytes each) of a 32-byte secret; any ``t`` rebuild it."""
    from Crypto.Protocol.SecretSharing import Shamir

    halves = [Shamir.split(t, n, secret[i:i + 16]) for i in (0, 16)]
    return [(i, a + b) for (i, a), (_, b) in zip(*halves, strict=True)]


def combine(shares: list[tuple[int, bytes]]) -> bytes:
    """The secret from at least ``t`` of its :func:`split` shares."""
    from Crypto.Protocol.SecretSharing import Shamir

    return b"".join(Shamir.combine([(i, s[h:h + 16]) for i, s in shares]) for h in (0, 16))


def model_hash(params: dict) -> str:
    """SHA-256 of a global model's arrays (key order fixed): what a site binds its masks to."""
    digest = hashlib.sha256()
    for key in sorted(params):
        array = np.ascontiguousarray(np.asarray(params[key], np.float64))
        digest.update(key.encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()


def keys_message(session: str, rnd: int, site: str, c_pk: bytes, s_pk: bytes) -> bytes:
    """What a site signs when it advertises its round keys."""
    return json.dumps(["fl-syft secagg keys", session, rnd, site, c_pk.hex(), s_pk.hex()]).encode()


def consistency_message(session: str, rnd: int, survivors: list[str], mask_set: list[str], model: str,
                        contribution: str) -> bytes:
    """What each survivor signs, once per round, before any share is revealed (Bonawitz et al.'s
    consistency check): the survivor set, the sites it masked with, the model it masked for and the
    digest of what it was asked to contribute. A site reveals shares only if every survivor signed
    exactly the tuple it holds itself."""
    return json.dumps(["fl-syft secagg consistency", session, rnd, sorted(survivors), sorted(mask_set), model,
                       contribution]).encode()


def verify(verify_key_hex: str, message: bytes, signature: bytes) -> bool:
    """Ed25519 signature check (PyNaCl, the keys PySyft gives every datasite)."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(bytes.fromhex(verify_key_hex)).verify(message, signature)
        return True
    except (BadSignatureError, ValueError):
        return False


# How a site's update is weighted in a secure sum (FedAvg's weights, computed at the site).
WEIGHTS = {
    "n_samples": lambda r: np.float64(r["n_samples"]),
    # FedAvg without DP: class row k weighted by the site's rows if it holds class k, else 0
    "held_rows": lambda r: r["n_samples"] * (np.asarray(r["class_counts"]) > 0).astype(np.float64),
}


def summable(result: dict, fields: list[str], weight: str | None) -> np.ndarray:
    """A site's result as the vector the sum is taken over: each field times the ``weight``
    (see WEIGHTS: a scalar, or one value per leading row), then the weight itself; no weight:
    the fields as they are."""
    w = None if weight is None else np.asarray(WEIGHTS[weight](result), np.float64)
    parts = []
    for field in fields:
        value = np.asarray(result[field], np.float64)
        parts.append((value if w is None else value * w.reshape(w.shape + (1,) * (value.ndim - w.ndim))).ravel())
    if w is not None:
        parts.append(np.atleast_1d(w).ravel())
    return np.concatenate(parts)


def unsummable(vector: np.ndarray, shapes: dict[str, tuple[int, ...]], weight_shape: tuple[int, ...] | None
               ) -> dict[str, np.ndarray]:
    """Inverse of :func:`summable` on a sum: {field: summed (weighted) array, "weight": summed weight}."""
    out, at = {}, 0
    for field, shape in shapes.items():
        size = int(np.prod(shape))
        out[field] = vector[at:at + size].reshape(shape)
        at += size
    if weight_shape is not None:
        out["weight"] = vector[at:at + int(np.prod(weight_shape) or 1)].reshape(weight_shape)
    return out
