"""A site's side of secure aggregation: its round keys never leave it, and it answers each step once.

Per (session, round) the site holds two X25519 key pairs (one to encrypt Shamir shares to its
peers, one to agree pairwise masks) and a self-mask seed, in this process's memory only.
Its peers' public keys reach it through the data scientist, who relays every message and may
be malicious, so each advertisement is signed with the advertising datasite's own key and
checked against the peers the owner listed in the policy: a substituted key is refused.

A round, at this site: ``advertise`` (signed keys), ``share_keys`` (sealed shares of its seed
and mask key to each advertised peer), ``mask`` (called by the guard: the masked update, once;
its mask set U2 is this site and every peer whose sealed share to it authenticates, i.e. every
site that really shared keys with it this round), ``confirm`` (once: it signs the tuple
(S, U2, model, contribution) of :func:`~fl_syft.common.secagg.consistency_message` for the
survivor set S, S within U2) and ``unmask`` (once: only if every member of S signed exactly
the tuple this site holds, |S| >= t and it is in S; it then reveals seed shares for S and key
shares for U2 minus S, nothing for any other site). The steps used are recorded in
``secagg.jsonl`` so a restart cannot be used to answer twice. Every argument is checked
(types, names, sizes) before any state changes: a malformed one is a one-line refusal.

Why the scientist can only unmask a sum of at least t sites' updates. Each honest site signs one
tuple per round, and two survivor sets of at least t of the n peers share at least 2t - n sites.
With t > n/2 (the policy enforces it) and a scientist colluding with c < 2t - n sites, both sets
hold an honest site, which signed only one tuple: every honest site that reveals anything saw
the same S and U2. For each site v the scientist then gets honest shares of only one of v's
secrets, and its c colluders hold fewer than t of the other: v in S, the seed (v's pairwise
masks with the rest of S stay, and cancel only in the sum over S); v in U2 minus S, the mask key
(v's self-mask stays, so a masked update declared dropped stays hidden). So the one vector it
can unmask is the sum over S, at least t sites (t - c honest ones), all masked for the same
model and asked the same contribution (function, config, fields, weight): under DP each added
noise of std sigma/sqrt(t), so the sum carries noise of at least the sigma each site's ledger
charged (when no site colludes: colluders may add none).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fl_syft.common import secagg
from fl_syft.common.errors import one_line
from fl_syft.owner.secagg_args import (
    SEALED_BYTES,
    SIGNATURE_BYTES,
    SecAggRefused,
    check_advert,
    check_by_site,
    check_bytes,
    check_hex,
    check_names,
    check_rnd,
    check_session,
    check_update,
    refuse,
    show,
)

log = logging.getLogger("fl_syft.secagg")

STEPS = {  # step -> its keyword arguments, exactly
    "advertise": ("session", "rnd"),
    "share_keys": ("session", "rnd", "adverts"),
    "confirm": ("session", "rnd", "survivors"),
    "unmask": ("session", "rnd", "survivors", "signatures"),
}
RECORDED = ("keys", "mask", "confirm", "unmask")  # the once-only steps in secagg.jsonl
LIVE_ROUNDS = 64  # rounds whose secrets a site holds at once; a new one past that forgets the oldest
# --- the protocol -----------------------------------------------------------------------------


@dataclass
class _Round:
    c_sk: bytes
    c_pk: bytes
    s_sk: bytes
    s_pk: bytes
    self_seed: bytes
    advertised: dict = field(default_factory=dict)  # U1: site -> {"c_pk", "s_pk"}, this site included
    own_share: dict = field(default_factory=dict)  # our share of our own secrets
    mask_set: list[str] | None = None  # U2 (sorted): this site and every site whose share to us opened
    held: dict = field(default_factory=dict)  # U2 site -> its (opened) share to us {"index", "seed", "key"}
    model: str | None = None
    contribution: str | None = None
    confirmed: list[str] | None = None  # the survivor set S this site signed
    signature: bytes | None = None


class SecAggSite:
    """The protocol state of one datasite. ``sign(message) -> signature`` uses the datasite's own
    signing key; ``peers`` maps every federation site's name to its verify key (hex)."""

    def __init__(self, site: str, sign, peers: dict[str, str], threshold: int, used_path: Path):
        if site not in peers:
            raise ValueError(f"{site} must be among its own peers")
        self.site, self.sign, self.peers, self.threshold = site, sign, dict(peers), threshold
        self.used_path = Path(used_path)
        self._rounds: dict[tuple[str, int], _Round] = {}
        self._used: set[tuple[str, int, str]] = self._load_used()
        self._lock = threading.Lock()

    def steps(self, steps: object) -> dict:
        """One protocol step, as the endpoint receives it: ``{step: {argument: value}}`` with step
        one of STEPS and exactly its arguments; {step: answer}. Anything else is SecAggRefused (one
        line) before any state changes. One step per request, so no answer is lost to a later
        step's refusal."""
        if type(steps) is not dict or len(steps) != 1:
            refuse(f"steps must be a dict of exactly one step ({', '.join(STEPS)}) -> its arguments")
        (step, kwargs), = steps.items()
        if type(step) is not str or step not in STEPS:
            refuse(f"unknown step {show(step)}: one of {', '.join(STEPS)}")
        if type(kwargs) is not dict or set(kwargs) != set(STEPS[step]):
            got = ", ".join(sorted(map(show, kwargs))) if type(kwargs) is dict else type(kwargs).__name__
            refuse(f"step {step} takes exactly {', '.join(STEPS[step])} (got {got or 'nothing'})")
        return {step: getattr(self, step)(**kwargs)}

    def advertise(self, session: str, rnd: int) -> dict:
        """This round's public keys, signed (the same answer if asked again)."""
        session, rnd = check_session(session), check_rnd(rnd)
        with self._lock:
            key = (session, rnd)
            if key not in self._rounds:
                self._once(session, rnd, "keys")
                while len(self._rounds) >= LIVE_ROUNDS:  # bounded memory whatever a caller opens
                    self._rounds.pop(next(iter(self._rounds)))
                (c_sk, c_pk), (s_sk, s_pk) = secagg.keypair(), secagg.keypair()
                self._rounds[key] = _Round(c_sk, c_pk, s_sk, s_pk, os.urandom(32))
            r = self._rounds[key]
            return {"site": self.site, "c_pk": r.c_pk, "s_pk": r.s_pk,
                    "signature": self.sign(secagg.keys_message(session, rnd, self.site, r.c_pk, r.s_pk))}

    def share_keys(self, session: str, rnd: int, adverts: dict[str, dict]) -> dict[str, bytes]:
        """Check every peer's signed keys, then seal to each a Shamir share of our self-mask seed and
        of our mask secret. Returns {peer: sealed share}."""
        session, rnd = check_session(session), check_rnd(rnd)
        adverts = check_by_site(adverts, "adverts", self.peers, check_advert)
        with self._lock:
            r = self._round(session, rnd)
            if r.advertised:
                refuse(f"round {rnd}: keys already shared")
            names = sorted(adverts)
            if self.site not in names or len(names) < self.threshold:
                where = "among them" if self.site in names else "missing"
                refuse(f"round {rnd}: {len(names)} sites, this site {where}; at least {self.threshold} needed")
            for name in names:
                ad = adverts[name]
                message = secagg.keys_message(session, rnd, name, ad["c_pk"], ad["s_pk"])
                if ad["site"] != name or not secagg.verify(self.peers[name], message, ad["signature"]):
                    refuse(f"round {rnd}: the keys given for {name} are not signed by {name}: "
                           "refusing (a key was substituted)")
            if (adverts[self.site]["c_pk"], adverts[self.site]["s_pk"]) != (r.c_pk, r.s_pk):
                refuse(f"round {rnd}: the keys given for this site are not its own")
            r.advertised = {n: {"c_pk": adverts[n]["c_pk"], "s_pk": adverts[n]["s_pk"]} for n in names}
            index = {n: i + 1 for i, n in enumerate(names)}
            seed_shares = dict(secagg.split(r.self_seed, len(names), self.threshold))
            key_shares = dict(secagg.split(r.s_sk, len(names), self.threshold))
            shares = {n: {"index": index[n], "seed": seed_shares[index[n]].hex(), "key": key_shares[index[n]].hex()}
                      for n in names}
            r.own_share = shares[self.site]
            return {n: secagg.seal(r.c_sk, r.advertised[n]["c_pk"], (session, rnd, self.site, n),
                                   json.dumps(shares[n]).encode())
                    for n in names if n != self.site}

    def mask(self, session: str, rnd: int, peers: list[str], shares_in: dict[str, bytes], model: str,
             update: np.ndarray, *, contribution: str) -> dict:
        """Our masked update for this round (once), masked with each of ``peers`` for ``model``.

        The mask set U2 is ``peers``: this site and exactly the sites in ``shares_in``, each of
        whose sealed share to us must open (it authenticates its sender: only a site that shared
        its keys with us this round can make one), all advertised to us, at least the threshold.
        U2 may leave out an advertised site (one that failed while sharing keys); it is signed,
        with ``model`` and ``contribution`` (the guard's digest of what we were asked to add), in
        :meth:`confirm`, and nothing is unmasked unless every survivor masked with the same U2."""
        session, rnd = check_session(session), check_rnd(rnd)
        peers = check_names(peers, "peers", self.peers)
        shares_in = check_by_site(shares_in, "shares", self.peers, lambda v, what: check_bytes(v, what, *SEALED_BYTES))
        model = check_hex(model, "model", 64, 64)
        contribution = check_hex(contribution, "contribution", 16, 128)
        update = check_update(update)
        with self._lock:
            r = self._round(session, rnd)
            if not r.advertised:
                refuse(f"round {rnd}: keys were not shared yet")
            if r.mask_set is not None:
                refuse(f"round {rnd}: step 'mask' was already taken (a mask is never reused)")
            if self.site not in peers or not set(peers) <= set(r.advertised) or len(peers) < self.threshold:
                refuse(f"round {rnd}: {len(peers)} sites to mask with, {self.threshold} needed, all of them "
                       "advertised and this site among them")
            if set(shares_in) != set(peers) - {self.site}:
                refuse(f"round {rnd}: shares from {sorted(shares_in)}, expected one from every other site in the "
                       "round")
            held = {name: self._open(session, rnd, r, name, sealed) for name, sealed in shares_in.items()}
            self._once(session, rnd, "mask")
            r.mask_set, r.held, r.model, r.contribution = peers, {**held, self.site: r.own_share}, model, contribution
            y = secagg.quantize(update, len(self.peers)) + secagg.prg(r.self_seed, len(update))
            for peer in peers:
                if peer != self.site:
                    mask = secagg.pair_mask(r.s_sk, r.advertised[peer]["s_pk"], session, rnd, model, self.site, peer,
                                            len(update))
                    y = y + secagg.signed_mask(self.site, peer, mask)
            return {"masked": y}

    def confirm(self, session: str, rnd: int, survivors: list[str]) -> bytes:
        """Our signature of (survivors, our mask set, model, contribution): once per round (the same
        signature again for the same survivors), only after masking, for survivors of at least the
        threshold, within our mask set, this site among them."""
        session, rnd = check_session(session), check_rnd(rnd)
        survivors = check_names(survivors, "survivors", self.peers)
        with self._lock:
            r = self._round(session, rnd)
            self._check_survivors(rnd, r, survivors)
            if r.confirmed is not None:
                if r.confirmed == survivors:
                    return r.signature
                refuse(f"round {rnd}: this site already confirmed other survivors {r.confirmed} (it signs one "
                       "survivor set per round)")
            self._once(session, rnd, "confirm")
            r.confirmed = survivors
            r.signature = self.sign(secagg.consistency_message(session, rnd, survivors, r.mask_set, r.model,
                                                               r.contribution))
            return r.signature

    def unmask(self, session: str, rnd: int, survivors: list[str], signatures: dict[str, bytes]) -> dict:
        """Our shares to unmask the sum over ``survivors`` (once per round): only if every survivor
        signed exactly the consistency tuple this site holds (the survivors it confirmed, its mask
        set, model and contribution). Seed shares for the survivors, key shares for the rest of our
        mask set: never both kinds for one site, nothing for a site outside the mask set."""
        session, rnd = check_session(session), check_rnd(rnd)
        survivors = check_names(survivors, "survivors", self.peers)
        signatures = check_by_site(signatures, "signatures", self.peers,
                                   lambda v, what: check_bytes(v, what, SIGNATURE_BYTES, SIGNATURE_BYTES))
        with self._lock:
            r = self._round(session, rnd)
            self._check_survivors(rnd, r, survivors)
            if r.confirmed != survivors:
                refuse(f"round {rnd}: this site confirmed {r.confirmed or 'no survivors'}, not {survivors}: "
                       "nothing is unmasked")
            if set(signatures) != set(survivors):
                refuse(f"round {rnd}: signatures from {sorted(signatures)}, expected one from every survivor")
            message = secagg.consistency_message(session, rnd, survivors, r.mask_set, r.model, r.contribution)
            for name in survivors:
                if not secagg.verify(self.peers[name], message, signatures[name]):
                    refuse(f"round {rnd}: {name} did not sign the survivors, mask set, model and contribution "
                           "this site holds: refusing to unmask (the sites were given different views)")
            self._once(session, rnd, "unmask")
            self._rounds.pop((session, rnd))  # the round's secrets are no longer needed
            # A survivor's self-mask seed, a dropped site's mask secret: never both for one site.
            return {name: {"index": share["index"], kind: share[kind]} for name, share in r.held.items()
                    for kind in ["seed" if name in survivors else "key"]}

    def _check_survivors(self, rnd: int, r: _Round, survivors: list[str]) -> None:
        if r.mask_set is None:
            refuse(f"round {rnd}: this site masked no update")
        if self.site not in survivors or len(survivors) < self.threshold or not set(survivors) <= set(r.mask_set):
            refuse(f"round {rnd}: {len(survivors)} survivors, {self.threshold} needed, all of them in this site's "
                   f"mask set and this site among them: nothing is unmasked")

    def _open(self, session: str, rnd: int, r: _Round, sender: str, sealed: bytes) -> dict:
        """``sender``'s share to us, opened (authenticated) and checked; SecAggRefused otherwise."""
        from cryptography.exceptions import InvalidTag

        try:
            share = json.loads(secagg.open_sealed(r.c_sk, r.advertised[sender]["c_pk"], (session, rnd, sender,
                                                                                         self.site), sealed))
        except (InvalidTag, ValueError):
            refuse(f"round {rnd}: the share given from {sender} was not sealed by {sender} to this site")
        if type(share) is not dict or set(share) != {"index", "seed", "key"} or type(share["index"]) is not int \
                or not 1 <= share["index"] <= len(self.peers):
            refuse(f"round {rnd}: the share from {sender} is malformed")
        check_hex(share["seed"], f"the share from {sender}", 64, 64)
        check_hex(share["key"], f"the share from {sender}", 64, 64)
        return share

    def _round(self, session: str, rnd: int) -> _Round:
        r = self._rounds.get((session, rnd))
        if r is None:
            refuse(f"round {rnd} of session {session[:8]}: no keys advertised here (or the site restarted "
                   "since): start the round again")
        return r

    def _once(self, session: str, rnd: int, step: str) -> None:
        key = (session, rnd, step)
        if key in self._used:
            refuse(f"round {rnd}: step {step!r} was already taken (a mask is never reused)")
        self._used.add(key)
        fd = os.open(self.used_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(list(key)) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _load_used(self) -> set[tuple[str, int, str]]:
        """The steps taken before (a restart keeps them). A malformed line is logged and skipped:
        it cannot be a record of a step a valid request names (session, rnd and step are strict)."""
        used: set[tuple[str, int, str]] = set()
        if not self.used_path.exists():
            return used
        for number, line in enumerate(self.used_path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                session, rnd, step = json.loads(line)
                if step not in RECORDED:
                    refuse(f"unknown step {show(step)}")
                used.add((check_session(session), check_rnd(rnd), step))
            except (ValueError, TypeError, SecAggRefused) as e:
                log.warning("%s line %d is malformed (%s): skipped", self.used_path, number, one_line(e, 120))
        return used
