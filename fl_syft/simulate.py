"""In-process federation: the same rounds as a PySyft run, with each shard held in this process.

Sits beside both sides (it plays every data owner and the scientist at once): a
:class:`LocalSite` runs the same vetted functions the datasites run, found the way the
owner's approver finds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_syft.owner.approval import vetted_functions
from fl_syft.owner.launch import site_names

_VETTED = vetted_functions()


@dataclass
class LocalSite:
    """A site whose shard (n, 785) uint8 lives in this process."""

    name: str
    shard: np.ndarray

    def call(self, function: str, global_params: dict, config: dict) -> dict:
        return _VETTED[function](self.shard, global_params, config)


def local_sites(shards: list[np.ndarray]) -> list[LocalSite]:
    """Sites named site-1..site-N, the names launched datasites get too."""
    return [LocalSite(name, shard) for name, shard in zip(site_names(len(shards)), shards, strict=True)]
