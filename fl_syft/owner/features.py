"""A site's rows as the vetted functions see them: every public feature map, computed once.

The site computes each map (``common.features``) on its own rows when it starts and keeps the
results in memory for every call; the expensive ones are also kept on the owner's disk, beside
the ledgers (``<state root>/features/``, owner-only), keyed by the rows' content hash and the
map's spec, so a restart or the next run over the same rows reads them back instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fl_syft.common.features import MAPS, cached

FEATURES = "features"  # the cache's directory under the owner's state root


def site_features(rows: np.ndarray, cache: Path | None, site: str) -> dict[str, dict]:
    """{map name: {"X": (n, width) float32, "y": (n,) int64}} of a (n, 785) uint8 shard (pixels,
    then the label); ``cache``: where the features are kept (None: nowhere)."""
    labels = rows[:, -1].astype(np.int64)
    return {name: {"X": cached(fmap, rows[:, :-1], cache, f"{site}'s rows"), "y": labels}
            for name, fmap in MAPS.items()}
