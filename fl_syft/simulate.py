"""In-process federation: the same rounds as a PySyft run, calling ``ml_experiment`` directly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_syft.experiment import lr_loss_grad, ml_experiment


@dataclass
class LocalSite:
    """A site whose shard (n, 785) uint8 lives in this process."""

    name: str
    shard: np.ndarray

    def fit(self, global_params: dict, config: dict) -> dict:
        return ml_experiment(self.shard, global_params, config)

    def loss_grad(self, global_params: dict, config: dict) -> dict:
        return lr_loss_grad(self.shard, global_params, config)


def local_sites(shards: list[np.ndarray]) -> list[LocalSite]:
    """Sites named site-1..site-N, the names the datasites get too."""
    return [LocalSite(site_name(i), shard) for i, shard in enumerate(shards, start=1)]


def site_name(number: int) -> str:
    return f"site-{number}"
