"""FedAvg: every site trains the received model on its rows; the scientist averages the results.

A site runs a few lbfgs iterations (scikit-learn, ``ml_experiment``) from the global model;
class row k of the average is weighted by the rows of the sites that hold class k. Under the
sites' differential privacy the DP wrapper (``algorithms.private``) replaces the local
training by noisy gradient steps; with secure aggregation the secure wrapper
(``algorithms.secure``) forms the same sums from masked answers. Neither changes this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fl_syft.common.features import DEFAULT as DEFAULT_FEATURES
from fl_syft.common.model import N_CLASSES
from fl_syft.common.protocol import ML_EXPERIMENT
from fl_syft.scientist.aggregate import validate_result
from fl_syft.scientist.algorithms.base import RoundAlgorithm, Summed, check_against, describe_settings, setting
from fl_syft.vetted.local_training import ml_experiment

# Only the sites' lbfgs round takes these ("features" is the run's, C the DP form reads too).
PLAIN_ONLY = tuple(k.name for k in ML_EXPERIMENT.keys if k.name not in ("C", "features"))


SETTINGS = (*PLAIN_ONLY, "C")  # the schema's keys that are settings of FedAvg's (not "features": the run's)


def _schema_setting(name: str, label: str | None = None, prefix: str = "no DP: ") -> object:
    """A setting whose help and default come from the vetted function's schema (what the site admits)."""
    key = ML_EXPERIMENT[name]
    shown = ("on" if key.default else "off") if key.kind is bool else str(key.default)
    return setting(None, prefix + key.help, label, shown=shown)


@dataclass(frozen=True)
class FedAvgSettings:
    """Unset (None) settings take ``ml_experiment``'s defaults (``common.protocol.ML_EXPERIMENT``);
    checked against the ranges a site admits, before anything is sent."""

    local_iters: int | None = _schema_setting("local_iters", "local lbfgs iterations per round")
    C: float | None = setting(None, ML_EXPERIMENT["C"].help, shown="1.0, under DP none")
    holdout: float | None = _schema_setting("holdout", "held-out fraction per site")
    seed: int | None = _schema_setting("seed", "holdout seed")
    logit_adjust: bool | None = _schema_setting("logit_adjust", "label-prior (logit) adjustment")

    def check(self) -> None:
        check_against(self, ML_EXPERIMENT)

    def resolved(self) -> FedAvgSettings:
        """These settings with ``ml_experiment``'s defaults filled in."""
        return dataclasses.replace(self, **{k: v for k, v in ML_EXPERIMENT.defaults().items()
                                            if k in SETTINGS and getattr(self, k) is None})


class FedAvg(RoundAlgorithm):
    name, title = "fedavg", "FedAvg"
    summary = "average the models the sites train locally from the global one"
    functions = (ml_experiment,)
    function = ml_experiment.__name__
    settings_type = FedAvgSettings
    default_rounds = 5
    rounds_help = ("5; under DP planned from the epsilon (scattering at 1: 100 noisy steps, 10 per round, or 1 "
                   "with secure aggregation; pixels: 12, with secure aggregation 80)")
    private_refusal = None  # the DP wrapper turns it into noisy gradient steps
    plain_only = PLAIN_ONLY
    def __init__(self, settings: FedAvgSettings | None = None, features: str = DEFAULT_FEATURES):
        super().__init__(settings, features)
        # Class row k is summed weighted by the rows of the sites holding class k ("held_rows").
        self.summed = Summed(self.shapes, "held_rows", (N_CLASSES,))

    def configure(self, params: dict) -> tuple[dict, dict]:
        s = self.settings.resolved()
        model = {key: params[key] for key in self.shapes if key in params}  # what the sites take; state stays here
        config = {name: ML_EXPERIMENT[name].kind(getattr(s, name)) for name in SETTINGS}  # plain types: PySyft checks
        return model, {**config, "features": self.features.name}

    def validate(self, site: str, result: object) -> None:
        validate_result(site, result, self.features.width)

    def aggregate(self, params: dict, sums: dict[str, np.ndarray]) -> dict:
        """Class row k: the sum over the sites holding class k, divided by their rows; a class no
        site holds keeps the received row (every site returned it unchanged)."""
        previous = params or {key: np.zeros(shape) for key, shape in self.shapes.items()}
        held = sums["weight"] > 0.5
        weight = np.where(held, sums["weight"], 1.0)
        return {"coef": np.where(held[:, None], sums["coef"] / weight[:, None], previous["coef"]),
                "intercept": np.where(held, sums["intercept"] / weight, previous["intercept"])}

    def describe(self) -> list[tuple[str, str]]:
        return describe_settings(self.settings.resolved())

    def training(self) -> dict:
        return dataclasses.asdict(self.settings.resolved())
