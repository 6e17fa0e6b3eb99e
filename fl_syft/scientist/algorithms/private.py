"""The DP wrapper: FedAvg over sites that enforce record-level differential privacy.

The sites' owners enforce DP (their policy); this wrapper is the scientist's side of it. It
plans the run (``scientist.privacy``: the noise multiplier that spends exactly the epsilon
asked for over every noisy step), and turns the inner algorithm's local training into
``local_steps`` clipped, noisy gradient steps with momentum from the received model
(``ml_experiment`` under the site's DP), averaged weighted by the sites' published noisy row
counts. With one step per round (always, with secure aggregation) a site gets the model alone
and returns its step direction, and the momentum is applied here to the average: the sites'
momentum step exactly, with half the data on the wire each way. The plan is the wrapper's
data: a resumed run keeps its noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from fl_syft.common.accounting import epsilon, expand, noise_for
from fl_syft.common.errors import ConfigError
from fl_syft.common.protocol import ML_EXPERIMENT_DP, param_shapes, velocity_shapes
from fl_syft.scientist import privacy
from fl_syft.scientist.aggregate import check_fields
from fl_syft.scientist.algorithms.base import (
    RoundAlgorithm,
    Summed,
    Wrapper,
    check_against,
    describe_settings,
    setting,
    settings_names,
)
from fl_syft.scientist.algorithms.secure import Secure

# The scientist's defaults under DP, per feature map (the site's schema has no default for
# local_steps). Pixels: iid-2 at epsilon 1 (in-process, 16 seeds), with secure aggregation 91.86%
# mean, 91.73% worst, against 91.85% for 120 steps at 4.0 with momentum 0.9. Scattering: see
# ``STEPS_PER_EPSILON``.
DEFAULTS = {
    "pixels": {"rounds": 12, "local_steps": 10, **{k: ML_EXPERIMENT_DP[k].default for k in ("lr", "momentum",
                                                                                          "frequencies")}},
    "scattering": {"local_steps": 10, "lr": 4.0, "momentum": 0.9},
}
# With secure aggregation a site's own noise protects only one step: one step per round. The sum
# carries the noise of one central mechanism, so fewer, larger steps with less momentum do best.
SECURE_DEFAULTS = {
    "pixels": {**DEFAULTS["pixels"], "rounds": 80, "local_steps": 1, "lr": 10.0, "momentum": 0.85},
    "scattering": {**DEFAULTS["scattering"], "local_steps": 1},
}
# Scattering: the noisy steps a run makes, from the epsilon it spends. The noise per step grows
# with the square root of the steps, so a small budget affords few; but fewer than ~100 full-batch
# steps leave the model short of where it gets to (central, 60k rows, epsilon 1, step 4, momentum
# 0.9, in-process: 95.91% at 60 steps, 97.24% mean of 4 seeds at 100 (97.01..97.68), 97.34% at
# 150; at epsilon 3: 98.24% at 100, 98.36% at 200, 98.35% at 300).
STEPS_PER_EPSILON = ((0.25, 80), (1.0, 100), (3.0, 200), (8.0, 300))


def planned_steps(epsilon: float) -> int:
    """The noisy steps per site a scattering run spending ``epsilon`` makes: ``STEPS_PER_EPSILON``
    interpolated in log(epsilon), held constant beyond its ends."""
    points = np.log([e for e, _ in STEPS_PER_EPSILON])
    return int(round(float(np.interp(np.log(epsilon), points, [n for _, n in STEPS_PER_EPSILON]))))


def defaults(features: str, secure: bool, epsilon: float) -> dict:
    """The scientist's DP defaults for a run on ``features`` spending ``epsilon`` per site."""
    chosen = (SECURE_DEFAULTS if secure else DEFAULTS)[features]
    if "rounds" in chosen:
        return chosen
    return {**chosen, "rounds": max(1, round(planned_steps(epsilon) / chosen["local_steps"]))}


# The default step sizes were measured on 2 sites of 30k rows at epsilon 1 (``REFERENCE``). With
# fewer rows or more noise a fixed step lets the noise random-walk the model. The noise on a
# step's averaged gradient is sigma / rows per coordinate (clip units; the rows of one noisy sum:
# every site's with secure aggregation; else each site adds its own and the average has
# rows / sqrt(k)'s worth), so the default step is scaled down with rows / sigma against the
# reference's, to the power 1.5 (in-process, scattering, one seed each; the best step measured,
# then the rule's): 2 x 3000 rows, epsilon 0.5, secure, rows/sigma 90: step 4 79.8% (test loss
# 1.4 -> 16), 0.25 89.5%, 0.06 93.7% (rule 0.053); 1000/3000/2000/4000 rows at epsilon 1,
# secure, 268: 4 90.1%, 0.3 96.1%, 0.15 96.3% (rule 0.27); the same with each site's own noise:
# 4 86.6%, 0.33 92.3%, 0.16 94.3% (rule 0.16); 10 x 6000 rows, own noise: 4 94.6%, 1.27 96.3%
# (rule 1.2). Never scaled up, nor within 10% of the reference (its rows' published noise).
REFERENCE = {"rows": 60_000, "sites": 2, "epsilon": 1.0, "delta": 1e-5}
LR_POWER = 1.5


def noise_scaled_lr(lr: float, features: str, secure: bool, plan: privacy.PrivacyPlan) -> float:
    """The default step ``lr`` scaled down where the plan's noise per row exceeds the reference's."""
    rows = [b.rows for b in plan.budgets]
    if any(r is None or r <= 0 for r in rows):
        return lr
    ref = defaults(features, secure, REFERENCE["epsilon"])
    ref_sigma = noise_for(REFERENCE["epsilon"], REFERENCE["delta"], ref["rounds"] * ref["local_steps"])
    signal = _per_noise(sum(rows), len(rows), secure, plan.noise_multiplier)
    reference = _per_noise(REFERENCE["rows"], REFERENCE["sites"], secure, ref_sigma)
    if signal >= 0.9 * reference:
        return lr
    return float(max(lr * (signal / reference) ** LR_POWER, ML_EXPERIMENT_DP["lr"].low))


def _per_noise(rows: float, sites: int, secure: bool, sigma: float) -> float:
    """Rows per unit of one step's noise on the averaged gradient (see ``REFERENCE``)."""
    return (rows if secure else rows / np.sqrt(sites)) / sigma


def _dp_setting(name: str, label: str | None = None, shown: str | None = None) -> Any:
    key = ML_EXPERIMENT_DP[name]
    return setting(None, "under DP: " + key.help, label, shown=shown or str(DEFAULTS["pixels"][name]))


@dataclass(frozen=True)
class PrivateSettings:
    """Unset (None) settings take ``DEFAULTS`` (``SECURE_DEFAULTS`` with secure aggregation) of the run's features."""

    local_steps: int | None = _dp_setting("local_steps", "noisy gradient steps per round",
                                          "10, with secure aggregation 1")
    lr: float | None = _dp_setting("lr", "step size", "scattering 4.0; pixels 4.0, with secure aggregation 10.0")
    momentum: float | None = _dp_setting("momentum", shown="scattering 0.9; pixels 0.9, with secure aggregation 0.85")
    frequencies: int | None = _dp_setting("frequencies", "gradient frequencies per axis", "14 (pixels only)")

    def check(self) -> None:
        check_against(self, ML_EXPERIMENT_DP)

    def resolved(self, chosen: dict) -> PrivateSettings:
        """These settings with the ``chosen`` defaults (:func:`defaults`) filled in."""
        unset = [k for k in dataclasses.asdict(self) if getattr(self, k) is None]
        return dataclasses.replace(self, **{k: chosen.get(k) for k in unset})


class Private(Wrapper):
    key, suffix = "privacy", ", record-level DP"
    settings_type = PrivateSettings

    @classmethod
    def wraps(cls, algorithm: type) -> bool:
        return "private_refusal" in vars(algorithm) and algorithm.private_refusal is None

    def __init__(self, inner: RoundAlgorithm, data: dict, settings: PrivateSettings):
        super().__init__(inner, data, settings)
        self.default_rounds = data["rounds"]
        # One step per round: the momentum is applied to the average here (see the module docstring).
        self.central_momentum = settings.local_steps == 1
        width = self.features.width
        self.summed = Summed(velocity_shapes(width) if self.central_momentum else param_shapes(width), "n_samples")

    @classmethod
    def plan(cls, inner: RoundAlgorithm, statuses: list[dict], asked: Any, mode: dict) -> dict | None:
        given = {k: v for k, v in asked.settings.items() if k in settings_names(cls)}
        if not any(s["policy"].get("epsilon") is not None for s in statuses):
            privacy.plan(statuses, 0, asked.epsilon)  # refuses an epsilon no site enforces
            if given:
                raise ConfigError(f"{_braced(given)}: the sites enforce no differential privacy: they train with "
                                  "lbfgs; drop it")
            return None
        if not cls.wraps(type(inner)):
            private = [s["site"] for s in statuses if s["policy"].get("epsilon") is not None]
            why = inner.private_refusal or "it has no private form of its own (the DP form replaces its training)"
            raise ConfigError(f"{', '.join(private)} enforce differential privacy, which {inner.name} cannot run "
                              f"under: {why}")
        stray = [k for k in asked.settings if k in inner.plain_only]
        if stray:
            raise ConfigError(f"{_braced(stray)}: the sites enforce differential privacy: they take noisy gradient "
                              "steps; drop it")
        features = inner.features.name
        if features != "pixels" and given.get("frequencies") is not None:
            raise ConfigError(f"{{frequencies}} applies to --features pixels only, not {features}: drop it")
        secure = Secure.key in mode  # planned before this wrapper (see WRAPPERS)
        if secure and given.get("local_steps") not in (None, 1):
            raise ConfigError("{local_steps} must be 1 with secure aggregation under DP: each site adds only "
                              "1/sqrt(threshold) of the noise, which protects the sum of one step per round")
        chosen = defaults(features, secure, privacy.spendable(statuses, asked.epsilon))
        settings = PrivateSettings(**given).resolved(chosen)
        rounds = asked.rounds or chosen["rounds"]
        the_plan = privacy.plan(statuses, rounds * settings.local_steps, asked.epsilon, pooled=secure)
        scaled = {}
        if given.get("lr") is None:
            lr = noise_scaled_lr(settings.lr, features, secure, the_plan)
            if lr < settings.lr:
                scaled, settings = {"lr_unscaled": settings.lr}, dataclasses.replace(settings, lr=lr)
        return {**the_plan.to_dict(), "rounds": rounds, "settings": dataclasses.asdict(settings), **scaled}

    def configure(self, params: dict) -> tuple[dict, dict]:
        s, sites = self.settings, self.data["sites"].values()
        rows = sum(site["rows"] for site in sites)
        C = self.inner.settings.C
        sent = {k: params[k] for k in self.shapes if k in params} if self.central_momentum else params
        config = {"features": self.features.name, "local_steps": int(s.local_steps), "lr": float(s.lr),
                  "momentum": float(s.momentum), "l2": 0.0 if C is None else 1.0 / (C * rows),
                  "noise_multiplier": float(self.data["noise_multiplier"])}
        if s.frequencies is not None:
            config["frequencies"] = int(s.frequencies)
        return sent, config

    def validate(self, site: str, result: object) -> None:
        check_fields(site, result, param_shapes(self.features.width))

    def aggregate(self, params: dict, sums: dict[str, np.ndarray]) -> dict:
        """Every array averaged, weighted by the sites' published noisy row counts; with one step per
        round, the momentum step on the average step direction."""
        weight = float(sums["weight"])
        if not self.central_momentum:
            return {key: sums[key] / weight for key in param_shapes(self.features.width)}
        momentum, lr, new = self.settings.momentum, self.settings.lr, {}
        for name, shape in self.shapes.items():
            zero = np.zeros(shape)
            velocity = momentum * params.get(f"velocity_{name}", zero) + sums[f"velocity_{name}"] / weight
            new[name], new[f"velocity_{name}"] = params.get(name, zero) - lr * velocity, velocity
        return new

    def annotate(self, record: dict) -> dict:
        """The epsilon each site has spent once this round is done: its releases before the plan
        (the run's start, or its last replan) composed with the plan's so far (what its ledger
        holds, by the same accountant)."""
        record = self.inner.annotate(record)
        steps = (record["round"] - self.data.get("first_round", 1) + 1) * self.settings.local_steps
        sigma = self.data["noise_multiplier"]
        record["epsilon_spent"] = {
            site: epsilon([*_released(info), *[sigma] * steps], info["policy"]["delta"])
            for site, info in self.data["sites"].items()}
        return record

    def replanned(self, statuses: list[dict], done: int, rounds: int, pooled: bool) -> dict:
        """This plan for rounds ``done + 1 .. rounds``, from what the sites' ledgers hold now
        (``statuses``): each site is to end where the run's first plan would have left it (or at
        its budget, if its owner lowered it), so a round charged but lost (a site or the scientist
        killed mid-round) is accounted, not spent again: the remaining rounds get more noise.
        Unchanged if the plan still ends within both as it is. ``pooled``: under secure aggregation.
        ConfigError if the sites are not the plan's or have nothing left for these rounds."""
        data, steps = self.data, self.settings.local_steps
        budgets = {b.site: b for b in map(privacy.SiteBudget.from_status, statuses)}
        if set(budgets) != set(data["sites"]):
            raise ConfigError(f"this run ran over {', '.join(sorted(data['sites']))}, not "
                              f"{', '.join(sorted(budgets))}: resume it over the same sites "
                              "({connection} or {datasite})")
        targets = data.get("targets") or {site: epsilon([*_released(info), *[data["noise_multiplier"]] *
                                                         data["noisy_steps_per_site"]], info["policy"]["delta"])
                                          for site, info in data["sites"].items()}
        limits = {site: min(target, budgets[site].policy.epsilon) for site, target in targets.items()}
        releases = (rounds - done) * steps

        def end(site: str, sigma: float) -> float:
            b = budgets[site]
            return epsilon([*b.released, *[sigma] * releases], b.policy.delta)

        # The plan as it is, if it ends within the budget (as the ledger checks it) and the target.
        if rounds == data["rounds"] and all(end(site, data["noise_multiplier"]) <= min(
                budgets[site].policy.epsilon * (1 + 1e-10), targets[site] * (1 + 1e-6)) for site in targets):
            return data
        needed = []
        for site, limit in limits.items():
            b = budgets[site]
            try:
                needed.append(noise_for(limit, b.policy.delta, releases, b.released))
            except ValueError:
                raise ConfigError(f"{site}'s ledger already holds all this run was to spend (epsilon {b.spent:.4g} "
                                  f"of the {limit:.4g} it was to reach): rounds {done + 1}..{rounds} cannot run; "
                                  f"the model of round {done} is the run's result") from None
        sigma = max(max(needed) * (1 + 1e-9), max(b.policy.min_noise for b in budgets.values()))
        privacy.check_signal(sigma, privacy.signal_rows(list(budgets.values()), pooled), releases,
                             f"resuming rounds {done + 1}..{rounds} over", pooled=pooled, done=done)
        replan = {"at_round": done + 1, "noise_multiplier_before": data["noise_multiplier"],
                  "why": self._why(budgets, done, rounds), "noise_multiplier": sigma,
                  "spent_at_replan": {site: b.spent for site, b in budgets.items()}}
        # From here on each site's releases so far are those its ledger holds (``annotate``).
        sites = {site: {**info, "released": {repr(s): budgets[site].released.count(s)
                                             for s in set(budgets[site].released)}}
                 for site, info in data["sites"].items()}
        return {**data, "noise_multiplier": sigma, "rounds": rounds, "first_round": done + 1, "sites": sites,
                "noisy_steps_per_site": rounds * steps, "targets": targets,
                "replans": [*data.get("replans", []), replan]}

    def _why(self, budgets: dict, done: int, rounds: int) -> str:
        """Why a resume replans: other rounds asked for, and/or ledgers holding more releases than
        this run's completed rounds made (a round charged whose answer was lost, or other spending)."""
        data, reasons = self.data, []
        if rounds != data["rounds"]:
            reasons.append(f"{rounds} rounds asked for instead of {data['rounds']}")
        made = (done - data.get("first_round", 1) + 1) * self.settings.local_steps
        if any(len(b.released) > len(_released(data["sites"][site])) + made for site, b in budgets.items()):
            reasons.append("the ledgers hold more releases than the completed rounds made (a round charged "
                           "whose answer was lost, or other spending)")
        return "; ".join(reasons) or "the plan no longer ends within the budget"

    def rounds_for(self, asked: int | None) -> int:
        """The plan's rounds (a fresh plan is made for the rounds asked; a resume replans)."""
        return self.default_rounds

    def training(self) -> dict:
        """Every setting the run trains with: the inner's that apply under DP (as given: its own
        defaults do not apply; C None is no L2 penalty), this wrapper's, and the plan's noise."""
        inner = {k: v for k, v in dataclasses.asdict(self.inner.settings).items() if k not in self.inner.plain_only}
        p = self.data
        clip = next(iter(p["sites"].values()))["policy"]["clip"]  # the sites' common clip (``privacy.plan``)
        return {**inner, **dataclasses.asdict(self.settings), "rounds": p["rounds"], "clip": clip,
                "noise_multiplier": p["noise_multiplier"], "epsilon_per_site": p["epsilon_per_site"],
                "delta": p["delta"]}

    def describe(self) -> list[tuple[str, str]]:
        p = self.data
        dp = f"epsilon {p['epsilon_per_site']:.3g} per site for this run, delta {p['delta']:g}; {noise_of(p)}"
        return [*describe_settings(self.inner.settings), *describe_settings(self.settings),
                ("differential privacy", dp)]


def noise_of(plan: dict) -> str:
    """The plan's noise as a report says it: one multiplier on every noisy step, or, once a resume
    replanned it, each multiplier with the rounds it was used in."""
    if not plan.get("replans"):
        return (f"noise multiplier {plan['noise_multiplier']:.4g} on each of {plan['noisy_steps_per_site']} noisy "
                "steps per site")
    segments = [(1, plan["replans"][0]["noise_multiplier_before"]),
                *((r["at_round"], r["noise_multiplier"]) for r in plan["replans"])]
    stops = [start - 1 for start, _ in segments[1:]] + [plan["rounds"]]
    return ("noise multiplier " + ", ".join(f"{sigma:.4g} in rounds {start}-{stop}"
                                            for (start, sigma), stop in zip(segments, stops, strict=True))
            + " (replanned on resume from the sites' ledgers)")


def _released(site: dict) -> list[float]:
    """A planned site's releases before the run, as noise multipliers."""
    return expand(site["released"])


def _braced(names) -> str:
    return ", ".join("{" + n + "}" for n in names)
