"""A site's side of secure aggregation: its round keys never leave it, and it answers each step once.

Per (session, round) the site holds two X25519 key pairs (one to encrypt Shamir shares to its
peers, one to agree pairwise masks) and a self-mask seed, in this process's memory only.
Its peers' public keys reach it through the data scientist, so each advertisement is signed
with the advertising datasite's own key and checked against the peers the owner listed in
the policy: a substituted key is refused. The site masks one update per round (a second
would let the difference of two of its updates out), binds the masks to the model it
received, and reveals shares for unmasking once per round, and only if every survivor
masked the same model and at least the threshold survived. The steps used per round are
recorded in ``secagg.jsonl`` so a restart cannot be used to answer twice.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fl_syft.common import secagg
from fl_syft.common.errors import FlSyftError


class SecAggRefused(FlSyftError):
    """This site will not take this secure-aggregation step; the message says why."""


@dataclass
class _Round:
    c_sk: bytes
    c_pk: bytes
    s_sk: bytes
    s_pk: bytes
    self_seed: bytes
    peers: dict = field(default_factory=dict)  # site -> {"c_pk", "s_pk"} (bytes), this site included
    shares_in: dict = field(default_factory=dict)  # site -> sealed share it sent us
    own_share: dict = field(default_factory=dict)  # our share of our own secrets
    model: str | None = None


class SecAggSite:
    """The protocol state of one datasite. ``sign(message) -> signature`` uses the datasite's own
    signing key; ``peers`` maps every federation site's name to its verify key (hex)."""

    def __init__(self, site: str, sign, peers: dict[str, str], threshold: int, used_path: Path):
        if site not in peers:
            raise ValueError(f"{site} must be among its own peers")
        self.site, self.sign, self.peers, self.threshold = site, sign, dict(peers), threshold
        self.used_path = Path(used_path)
        self._rounds: dict[tuple[str, int], _Round] = {}
        self._used: set[tuple[str, int, str]] = set()
        if self.used_path.exists():
            self._used = {tuple(json.loads(line)) for line in self.used_path.read_text().splitlines()}
        self._lock = threading.Lock()

    def advertise(self, session: str, rnd: int) -> dict:
        """This round's public keys, signed (the same answer if asked again)."""
        with self._lock:
            key = (session, int(rnd))
            if key not in self._rounds:
                self._once(session, rnd, "keys")
                (c_sk, c_pk), (s_sk, s_pk) = secagg.keypair(), secagg.keypair()
                self._rounds[key] = _Round(c_sk, c_pk, s_sk, s_pk, os.urandom(32))
            r = self._rounds[key]
            return {"site": self.site, "c_pk": r.c_pk, "s_pk": r.s_pk,
                    "signature": self.sign(secagg.keys_message(session, rnd, self.site, r.c_pk, r.s_pk))}

    def share_keys(self, session: str, rnd: int, adverts: dict[str, dict]) -> dict[str, bytes]:
        """Check every peer's signed keys, then seal to each a Shamir share of our self-mask seed and
        of our mask secret. Returns {peer: sealed share}."""
        with self._lock:
            r = self._round(session, rnd)
            if r.peers:
                raise SecAggRefused(f"round {rnd}: keys already shared")
            names = sorted(adverts)
            if self.site not in names or len(names) < self.threshold:
                raise SecAggRefused(f"round {rnd}: {len(names)} sites, this site "
                                    f"{'among them' if self.site in names else 'missing'}; at least "
                                    f"{self.threshold} needed")
            for name in names:
                ad = adverts[name]
                if name not in self.peers:
                    raise SecAggRefused(f"{name} is not a peer in this site's policy")
                message = secagg.keys_message(session, rnd, name, ad["c_pk"], ad["s_pk"])
                if ad.get("site") != name or not secagg.verify(self.peers[name], message, ad["signature"]):
                    raise SecAggRefused(f"round {rnd}: the keys given for {name} are not signed by {name}: "
                                        "refusing (a key was substituted)")
            if (adverts[self.site]["c_pk"], adverts[self.site]["s_pk"]) != (r.c_pk, r.s_pk):
                raise SecAggRefused(f"round {rnd}: the keys given for this site are not its own")
            r.peers = {n: {"c_pk": adverts[n]["c_pk"], "s_pk": adverts[n]["s_pk"]} for n in names}
            index = {n: i + 1 for i, n in enumerate(names)}
            seed_shares = dict(secagg.split(r.self_seed, len(names), self.threshold))
            key_shares = dict(secagg.split(r.s_sk, len(names), self.threshold))
            shares = {n: {"index": index[n], "seed": seed_shares[index[n]].hex(), "key": key_shares[index[n]].hex()}
                      for n in names}
            r.own_share = shares[self.site]
            return {n: secagg.seal(r.c_sk, r.peers[n]["c_pk"], (session, rnd, self.site, n),
                                   json.dumps(shares[n]).encode())
                    for n in names if n != self.site}

    def mask(self, session: str, rnd: int, peers: list[str], shares_in: dict[str, bytes], model: str,
             update: np.ndarray) -> dict:
        """Our masked update for this round (once), bound to ``model``, masked with each of ``peers``
        (the sites that shared their keys); keeps the shares they sent us."""
        with self._lock:
            r = self._round(session, rnd)
            if not r.peers:
                raise SecAggRefused(f"round {rnd}: keys were not shared yet")
            peers = sorted(set(peers))
            if self.site not in peers or not set(peers) <= set(r.peers) or len(peers) < self.threshold:
                raise SecAggRefused(f"round {rnd}: {len(peers)} sites to mask with, {self.threshold} needed, all "
                                    "of them advertised and this site among them")
            if set(shares_in) != set(peers) - {self.site}:
                raise SecAggRefused(f"round {rnd}: shares from {sorted(shares_in)}, expected one from every other "
                                    "site in the round")
            self._once(session, rnd, "mask")
            r.peers = {n: r.peers[n] for n in peers}
            r.shares_in, r.model = dict(shares_in), model
            y = secagg.quantize(update) + secagg.prg(r.self_seed, len(update))
            for peer, keys in r.peers.items():
                if peer != self.site:
                    mask = secagg.pair_mask(r.s_sk, keys["s_pk"], session, rnd, model, self.site, peer, len(update))
                    y = y + secagg.signed_mask(self.site, peer, mask)
            return {"masked": y, "model_signature": self.sign(secagg.model_message(session, rnd, self.site, model))}

    def unmask(self, session: str, rnd: int, survivors: list[str], model_signatures: dict[str, bytes]) -> dict:
        """Shares to remove the survivors' self-masks and the dropped sites' pairwise masks (once
        per round, never both kinds for one site, only if every survivor masked our model)."""
        with self._lock:
            r = self._round(session, rnd)
            survivors = sorted(set(survivors))
            if r.model is None or self.site not in survivors:
                raise SecAggRefused(f"round {rnd}: this site masked no update")
            if len(survivors) < self.threshold or not set(survivors) <= set(r.peers):
                raise SecAggRefused(f"round {rnd}: {len(survivors)} survivors, {self.threshold} needed: "
                                    "nothing is unmasked")
            for name in survivors:
                message = secagg.model_message(session, rnd, name, r.model)
                signature = model_signatures.get(name)
                if signature is None or not secagg.verify(self.peers[name], message, signature):
                    raise SecAggRefused(f"round {rnd}: {name} did not mask the model this site received: "
                                        "refusing to unmask (different models were sent to different sites)")
            self._once(session, rnd, "unmask")
            held = {n: json.loads(secagg.open_sealed(r.c_sk, r.peers[n]["c_pk"], (session, rnd, n, self.site), s))
                    for n, s in r.shares_in.items()}
            held[self.site] = r.own_share
            self._rounds.pop((session, int(rnd)))  # the round's secrets are no longer needed
            # A survivor's self-mask seed, a dropped site's mask secret: never both for one site.
            return {name: {"index": share["index"], kind: share[kind]} for name, share in held.items()
                    for kind in ["seed" if name in survivors else "key"]}

    def _round(self, session: str, rnd: int) -> _Round:
        r = self._rounds.get((session, int(rnd)))
        if r is None:
            raise SecAggRefused(f"round {rnd} of session {session[:8]}: no keys advertised here (or the site "
                                "restarted since): start the round again")
        return r

    def _once(self, session: str, rnd: int, step: str) -> None:
        key = (session, int(rnd), step)
        if key in self._used:
            raise SecAggRefused(f"round {rnd}: step {step!r} was already taken (a mask is never reused)")
        self._used.add(key)
        fd = os.open(self.used_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(list(key)) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
