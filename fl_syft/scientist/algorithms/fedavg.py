"""FedAvg: every site trains the received model on its rows for a few iterations; the scientist
averages the results, weighted by rows (per class: over the sites that hold the class)."""

from __future__ import annotations

from dataclasses import dataclass

from fl_syft.common.errors import ConfigError
from fl_syft.scientist.aggregate import fedavg, validate_result
from fl_syft.scientist.algorithms.base import RoundAlgorithm, setting
from fl_syft.vetted.local_training import ml_experiment


@dataclass(frozen=True)
class FedAvgSettings:
    """``ml_experiment``'s config (same defaults as the vetted function), plus the number of rounds."""

    rounds: int = setting(5, "federated rounds")
    local_iters: int = setting(20, "local lbfgs iterations per site and round", "local lbfgs iterations per round")
    C: float = setting(1.0, "inverse L2 strength")
    holdout: float = setting(0.05, "fraction of each site's rows held out to score the received global model",
                             "held-out fraction per site")
    seed: int = setting(0, "seed of each site's holdout split", "holdout seed")
    logit_adjust: bool = setting(True, "sites train with their own label prior in the intercepts and return "
                                       "prior-free models (helps under label skew)",
                                 "label-prior (logit) adjustment")

    def check(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"{{rounds}} must be at least 1, got {self.rounds}")
        if self.local_iters < 1:
            raise ConfigError(f"{{local_iters}} must be at least 1, got {self.local_iters}")
        if not self.C > 0:
            raise ConfigError(f"{{C}} must be > 0, got {self.C}")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"{{holdout}} must be in [0, 1), got {self.holdout}")


class FedAvg(RoundAlgorithm):
    name, title = "fedavg", "FedAvg"
    summary = "average the models the sites train locally from the global one"
    functions = (ml_experiment,)
    function = ml_experiment.__name__
    settings_type = FedAvgSettings

    def site_config(self) -> dict:
        s = self.settings
        return {"local_iters": int(s.local_iters), "C": float(s.C), "holdout": float(s.holdout),
                "seed": int(s.seed), "logit_adjust": bool(s.logit_adjust)}

    def validate(self, site: str, result: object) -> None:
        validate_result(site, result)

    def aggregate(self, params: dict, results: dict[str, dict]) -> dict:
        return fedavg(results)
