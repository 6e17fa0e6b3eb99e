"""Federated algorithms, by name. A new algorithm is a module here and one line in REGISTRY."""

from __future__ import annotations

from fl_syft.scientist.algorithms.base import Algorithm, RoundAlgorithm
from fl_syft.scientist.algorithms.fedavg import FedAvg
from fl_syft.scientist.algorithms.lbfgs import Lbfgs

REGISTRY: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FedAvg, Lbfgs)}

__all__ = ["REGISTRY", "Algorithm", "RoundAlgorithm", "FedAvg", "Lbfgs"]
