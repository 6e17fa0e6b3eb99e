"""The round loop, the same for every round algorithm and wrapper: configure, collect, aggregate, record.

Each round the algorithm (the outermost wrapper) says what to send (``configure``), collects
every site's answer as the sums it needs (``collect``: the sites' answers summed here, or a
secure sum), forms the next model from them (``aggregate``), and the loop scores it on the
public test set and records the round. After every round ``on_round`` sees the state (the
caller checkpoints it), so an interrupted run loses at most the round in progress.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from fl_syft.scientist.algorithms.base import OnRound, RoundAlgorithm, State
from fl_syft.scientist.rounds import Resilience, Site, format_round, round_record


def run_rounds(algorithm: RoundAlgorithm, sites: Sequence[Site], X_test: np.ndarray, y_test: np.ndarray, *,
               rounds: int, state: State = State(), on_round: OnRound | None = None,
               resilience: Resilience = Resilience(), echo: bool = True) -> State:
    """Rounds ``len(state.history)+1 .. rounds`` from ``state``. A site that still fails after its
    retries is left out of that round (recorded under "dropped") if at least
    ``resilience.min_sites`` answered; otherwise SitesFailed is raised (the rounds so far were
    passed to ``on_round``). ``echo``: print a line per round."""
    params, history = dict(state.params), list(state.history)
    first = len(history) + 1
    with ThreadPoolExecutor(max_workers=len(sites)) as pool, \
            tqdm(total=rounds, initial=first - 1, desc="rounds", unit="round", leave=False, disable=not echo) as bar:
        for rnd in range(first, rounds + 1):
            started = time.perf_counter()
            sent, config = algorithm.configure(params)
            collected = algorithm.collect(pool, sites, sent, config, rnd, resilience)
            params = algorithm.aggregate(params, collected.sums)
            record = round_record(rnd, params, collected.calls, collected.dropped, started, X_test, y_test)
            record.update(collected.notes)
            history.append(algorithm.annotate(record))
            bar.update()
            if echo:
                tqdm.write(format_round(record))
            if on_round:
                on_round(params, history)
    return State(params, history)
