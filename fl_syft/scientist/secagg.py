"""Secure aggregation, the data scientist's side: relay the sites' keys and shares, add the masked
updates, unmask the sum. The scientist learns the sum of the surviving sites' updates and nothing else.

Per round every site takes four calls: a protocol call (``Site.secagg``: this round's sealed
Shamir shares for its peers), the vetted function itself, whose update the site's guard masks
before it leaves (and which carries the site's keys for the next round), a protocol call in
which each survivor signs the survivor set (Bonawitz et al.'s consistency check: with its mask
set, model and contribution), and a protocol call with its shares for unmasking the sum, given
every survivor's signature. A site that fails after sharing its keys and before answering with
its masked update is recovered from the others' shares (threshold t of n), and so is one that
fails after confirming; below the threshold the round fails and nothing is unmasked. A site
that masked but does not confirm fails the round: every survivor must sign the same survivor
set, and a site signs one per round, so there is no second set to ask for (nothing is unmasked,
its update stays hidden behind its self-mask).
"""

from __future__ import annotations

import math
import secrets
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from fl_syft.common import secagg
from fl_syft.common.errors import counted, one_line
from fl_syft.common.protocol import SECAGG_KEY
from fl_syft.scientist.rounds import Resilience, Site, SitesFailed


@dataclass
class Round:
    """What one securely aggregated round gave: the sum, who is in it, and where the time went."""

    total: np.ndarray  # the unmasked sum of the survivors' update vectors
    survivors: list[str]
    dropped: dict[str, str]  # site -> why
    # keys, masked_update (masking within it), unmask (the consistency check within it)
    seconds: dict[str, float] = field(default_factory=dict)


class SecureSum:
    """The secure sum of ``function``'s results over ``sites``, round after round (one session)."""

    def __init__(self, sites: Sequence[Site], threshold: int, pool: ThreadPoolExecutor,
                 resilience: Resilience = Resilience()):
        self.sites = {site.name: site for site in sites}
        self.threshold, self.pool, self.resilience = threshold, pool, resilience
        self.session = secrets.token_hex(16)
        self.adverts: dict[str, dict] | None = None  # the next round's signed keys, per site

    def round(self, rnd: int, function: str, params: dict, config: dict, fields: list[str],
              weight: str | None) -> Round:
        """One round: share keys (unmasking the previous round on the way), mask, unmask."""
        seconds: dict[str, float] = {}
        if self.adverts is None:  # the session's first round: keys first
            adverts, failed = self._each(list(self.sites), lambda s: s.secagg(
                {"advertise": {"session": self.session, "rnd": rnd}}))
            self._enough(rnd, adverts, failed, "advertising keys")
            self.adverts = {name: a["advertise"] for name, a in adverts.items()}
        started, keys = time.perf_counter(), self.adverts
        steps = {name: {"share_keys": {"session": self.session, "rnd": rnd, "adverts": keys}} for name in keys}
        answers, dropped = self._each(list(steps), lambda s: s.secagg(steps[s.name]))
        # A site that missed a round sent no keys for the next: it stays out of this session.
        dropped.update({name: f"{name} dropped out of this secure-aggregation session in an earlier round (it has "
                              f"no keys for round {rnd}); resuming the run (--resume) starts a session with it"
                        for name in self.sites if name not in keys})
        self._enough(rnd, answers, dropped, "sharing keys")
        seconds["keys"] = time.perf_counter() - started
        sharers = sorted(answers)
        inbox = {to: {frm: answers[frm]["share_keys"][to] for frm in sharers if frm != to} for to in sharers}
        started = time.perf_counter()
        masked, failed = self._each(sharers, lambda s: _checked(s.name, s.call(function, params, {
            **config, SECAGG_KEY: {"session": self.session, "rnd": rnd, "peers": sharers, "shares": inbox[s.name],
                                   "fields": fields, "weight": weight}})))
        dropped.update(failed)
        self._enough(rnd, masked, dropped, "masking updates")
        seconds["masked_update"] = time.perf_counter() - started
        seconds["masking"] = statistics.median(m["mask_seconds"] for m in masked.values())  # part of that
        self.adverts = {name: m["next_keys"] for name, m in masked.items()}
        started = time.perf_counter()
        total = self._unmask(rnd, params, masked, sharers, keys)
        seconds["unmask"] = time.perf_counter() - started
        return Round(total, sorted(masked), dropped, seconds)

    def _unmask(self, rnd: int, params: dict, masked: dict[str, dict], sharers: list[str],
                keys: dict[str, dict]) -> np.ndarray:
        survivors = sorted(masked)
        lengths = {name: len(m["masked"]) for name, m in masked.items()}
        if len(set(lengths.values())) != 1:
            raise SitesFailed(f"round {rnd}: the sites' masked updates differ in length ({lengths}): a site runs "
                              "another version of the vetted function; nothing is unmasked")
        confirm = {"confirm": {"session": self.session, "rnd": rnd, "survivors": survivors}}
        signed, failed = self._each(survivors, lambda s: _signature(s.name, s.secagg(confirm)))
        if failed:
            raise SitesFailed(f"round {rnd}: {', '.join(sorted(failed))} masked but did not confirm the survivors "
                              f"({'; '.join(failed.values())}): a site reveals shares only if every survivor signed "
                              "the same survivor set, so nothing is unmasked")
        request = {"unmask": {"session": self.session, "rnd": rnd, "survivors": survivors, "signatures": signed}}
        shares, failed = self._each(survivors, lambda s: s.secagg(request))
        if len(shares) < self.threshold:
            raise SitesFailed(f"round {rnd}: only {counted(len(shares), 'site')} answered the unmasking, "
                              f"{self.threshold} needed ({'; '.join(failed.values())}); nothing is unmasked")
        held = [answer["unmask"] for answer in shares.values()]
        total = np.zeros(lengths[survivors[0]], np.uint64)
        for m in masked.values():
            total = total + m["masked"]
        model = secagg.model_hash(params)
        for name in sharers:
            kind = "seed" if name in masked else "key"
            parts = [(h[name]["index"], bytes.fromhex(h[name][kind])) for h in held if kind in h.get(name, {})]
            if len(parts) < self.threshold:
                raise SitesFailed(f"round {rnd}: {len(parts)} shares of {name}'s {kind}, {self.threshold} needed; "
                                  "the sum cannot be unmasked")
            secret = secagg.combine(parts)
            if kind == "seed":
                total = total - secagg.prg(secret, len(total))
            else:  # a site that shared its keys but sent no update: remove its masks from the others'
                for u in survivors:
                    mask = secagg.pair_mask(secret, keys[u]["s_pk"], self.session, rnd, model, name, u, len(total))
                    total = total - secagg.signed_mask(u, name, mask)
        return secagg.dequantize(total)

    def _each(self, names: list[str], step) -> tuple[dict[str, dict], dict[str, str]]:
        """``step(site)`` on every named site at once: ({site: answer}, {site: why it failed})."""
        futures = {name: self.pool.submit(step, self.sites[name]) for name in names}
        answers, failed = {}, {}
        for name, future in futures.items():
            try:
                answers[name] = future.result()
            except Exception as e:
                failed[name] = one_line(e)
        return answers, failed

    def _enough(self, rnd: int, answers: dict, dropped: dict[str, str], what: str) -> None:
        if len(answers) < self.threshold:
            raise SitesFailed(f"round {rnd}: {counted(len(answers), 'site')} left while {what} "
                              f"({'; '.join(dropped.values())}), secure aggregation needs {self.threshold}; "
                              "nothing is unmasked")


def _signature(site: str, answer: object) -> bytes:
    """A site's consistency signature, or ValueError (the round then fails: see the module)."""
    signature = answer.get("confirm") if isinstance(answer, dict) else None
    if not isinstance(signature, bytes):
        raise ValueError(f"{site} returned no consistency signature")
    return signature


def _checked(site: str, answer: object) -> dict:
    """A site's masked update, or ValueError naming what is wrong with it (the site is then
    dropped from the round and its masks recovered like a dropout's)."""
    if not isinstance(answer, dict) or not {"masked", "next_keys", "mask_seconds"} <= set(answer):
        got = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
        raise ValueError(f"{site} returned no masked update (got {got})")
    vector = np.asarray(answer["masked"])
    if vector.ndim != 1 or vector.dtype != np.uint64:
        raise ValueError(f"{site} returned a masked update of shape {vector.shape} {vector.dtype}, not a uint64 vector")
    seconds = answer["mask_seconds"]
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{site} returned mask_seconds {seconds!r}, not a duration")
    return {**answer, "masked": vector, "mask_seconds": float(seconds)}
