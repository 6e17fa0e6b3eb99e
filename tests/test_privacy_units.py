"""Record-level DP, the pure parts: accountant, ledger, the owner's guard, the run plan, the DP step."""

from __future__ import annotations

import math
import re
import threading

import dp_accounting as dpa
import numpy as np
import pytest
from conftest import synthetic_shard, vetted_data, width

from fl_syft.common.accounting import epsilon, epsilon_of_event, noise_for
from fl_syft.common.errors import ConfigError
from fl_syft.common.features import DEFAULT as DEFAULT_FEATURES
from fl_syft.common.model import zeros
from fl_syft.common.protocol import ML_EXPERIMENT, ML_EXPERIMENT_DP, PIXELS_ONLY, Refusal
from fl_syft.owner.guard import Guard, Refused
from fl_syft.owner.ledger import BudgetExceeded, Ledger, summary
from fl_syft.owner.policy import owner_policy
from fl_syft.scientist.privacy import plan
from fl_syft.simulate import local_sites
from fl_syft.vetted.local_training import ml_experiment

DP = {"local_steps": 2, "lr": 1.0, "momentum": 0.9, "l2": 0.0, "noise_multiplier": 20.0}
ZEROS = zeros(width(DEFAULT_FEATURES))  # a model on the default feature map (scattering)
FEATURES = ["scattering", "pixels"]


def on(features: str, config: dict) -> dict:
    """``config`` on the feature map ``features`` (the default one is left unset, as a caller would)."""
    return config if features == DEFAULT_FEATURES else {**config, "features": features}


# --- accountant ---------------------------------------------------------------------------------

@pytest.mark.parametrize("event, accountant, expected", [
    (dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.0)), 500), "rdp", 1.65),
    (dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(2.0)), 2000), "rdp", 0.99),
    (dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(100.0), 100), "rdp", 0.38),
    (dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(49.0), 100), "rdp", 0.81),
])
def test_the_library_gives_the_published_values(event, accountant, expected):
    assert epsilon_of_event(event, 1e-5, accountant) == pytest.approx(expected, abs=0.01)


def test_pld_subsampled_value():
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.0)), 500)
    assert epsilon_of_event(event, 1e-5, "pld") == pytest.approx(1.33, abs=0.01)


def test_composed_gaussians_equal_the_librarys_own_composition():
    """The ledger's shortcut (one equivalent Gaussian) against dp-accounting composing them itself."""
    event = dpa.ComposedDpEvent([dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(40.0), 100),
                                 dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(100.0), 1)])
    assert epsilon([40.0] * 100 + [100.0], 1e-5) == pytest.approx(epsilon_of_event(event, 1e-5, "pld"), rel=1e-4)


def test_noise_for_spends_exactly_the_target_with_what_was_released_before():
    sigma = noise_for(1.0, 1e-5, 120, already=[100.0])
    assert epsilon([100.0, *[sigma] * 120], 1e-5) == pytest.approx(1.0, rel=1e-6)
    assert noise_for(1.0, 1e-5, 120) < sigma
    with pytest.raises(ValueError, match="already spent"):
        noise_for(0.01, 1e-5, 10, already=[1.0])


# --- ledger ---------------------------------------------------------------------------------------

def test_ledger_charges_refuses_and_survives_a_restart(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, "abc", total=1.0, delta=1e-5)
    sigma = noise_for(0.5, 1e-5, 10)
    assert ledger.charge(sigma, 10, "call") == pytest.approx(0.5, rel=1e-6)
    again = Ledger(path, "abc", total=1.0, delta=1e-5)  # a restart reads it back
    assert again.spent == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(BudgetExceeded, match=r"epsilon 0.5 of 1 is spent and this call needs"):
        again.charge(sigma / 10, 10, "call")
    assert summary(path).epsilon_spent == pytest.approx(0.5, rel=1e-6)  # the refused call left no trace
    with pytest.raises(Exception, match="belongs to other data"):
        Ledger(path, "other rows", total=1.0, delta=1e-5)


def test_concurrent_charges_cannot_both_pass_when_only_one_fits(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl", "abc", total=1.0, delta=1e-5)
    sigma = noise_for(0.7, 1e-5, 1)  # one fits, two do not
    outcomes, start = [], threading.Barrier(8)

    def call():
        start.wait()
        try:
            ledger.charge(sigma, 1, "call")
            outcomes.append("charged")
        except BudgetExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["charged"] + ["refused"] * 7 and ledger.spent <= 1.0


# --- the owner's guard ----------------------------------------------------------------------------

def site(tmp_path, **policy):
    """A simulated site on ``synthetic_shard(3000)``: its guard and its rows' features (every map)."""
    return local_sites([synthetic_shard(3000)], owner_policy(**policy), tmp_path)[0]


def guard(tmp_path, **policy) -> Guard:
    return site(tmp_path, **policy).guard


@pytest.mark.parametrize("config, reason", [
    ({**DP, "local_steps": 5000}, "config local_steps=5000 is outside [1, 100]"),
    ({**DP, "noise_multiplier": 0.01}, "config noise_multiplier=0.01 is outside [0.5, 1e+06]"),
    ({**DP, "privacy": {"clip": 1e9, "rows": 1}}, "config key 'privacy' is set by the data owner's site"),
    ({**DP, "holdout": 0.999}, "unknown config keys ['holdout']"),
    ({k: v for k, v in DP.items() if k != "noise_multiplier"}, "config must set noise_multiplier"),
    ({**DP, "local_steps": 2.5}, "must be an integer"),
    ({**DP, "lr": float("nan")}, "config lr=nan is outside [0.0001, 100]"),
    ({**DP, "lr": 10**400}, "is outside [0.0001, 100]"),  # too large for a float: refused, not an error
    ({**DP, "momentum": True}, "config momentum=True is outside [0, 0.99]"),  # bool is not a number here
    ({**DP, "frequencies": 29}, "config frequencies=29 is outside [1, 28]"),
])
def test_guard_refuses_configs_outside_the_owners_bounds_and_charges_nothing(tmp_path, config, reason):
    g = guard(tmp_path)
    before = g.ledger.spent
    with pytest.raises(Refused, match=re.escape(reason)):
        g.admit("ml_experiment", ZEROS, config)
    assert g.ledger.spent == before


@pytest.mark.parametrize("features", FEATURES)
def test_guard_refuses_hostile_models_and_other_functions(tmp_path, features):
    g = guard(tmp_path)
    shape = (10, width(features))
    for coef in (np.full(shape, np.inf), np.full(shape, 1e39), np.zeros(shape, object),
                 np.zeros(shape).tolist(), np.full(shape, np.iinfo(np.int64).min)):  # |int64 min| wraps
        with pytest.raises(Refused, match=re.escape("global_params coef must be a numpy array of finite numbers "
                                                    f"within +-10000, shape {shape}")):
            g.admit("ml_experiment", {"coef": coef, "intercept": np.zeros(10)}, on(features, DP))
    other = zeros(width("pixels" if features == "scattering" else "scattering"))  # a model on the other map
    with pytest.raises(Refused, match=re.escape(f"shape {shape}")):
        g.admit("ml_experiment", other, on(features, DP))
    with pytest.raises(Refused, match="lr_loss_grad is not allowed under this site's policy"):
        g.admit("lr_loss_grad", ZEROS, {})


def adversarial_models(bound: float, n_features: int) -> list[dict]:
    """Models at the edges of what a site admits: every sign pattern that maximises or cancels logits,
    one class far above the rest, subnormal entries, and random extremes."""
    rng = np.random.default_rng(0)
    signs = np.where(np.arange(n_features) % 2, 1.0, -1.0)
    return [
        {"coef": np.full((10, n_features), bound), "intercept": np.full(10, -bound)},
        {"coef": np.outer(np.where(np.arange(10) % 2, 1.0, -1.0), signs) * bound, "intercept": np.full(10, bound)},
        {"coef": np.vstack([np.full((1, n_features), bound), np.full((9, n_features), -bound)]),
         "intercept": np.zeros(10)},
        {"coef": np.full((10, n_features), 5e-324), "intercept": np.full(10, 1e-310)},
        {"coef": rng.choice([-bound, bound], (10, n_features)), "intercept": rng.choice([-bound, bound], 10),
         "velocity_coef": rng.choice([-bound, bound], (10, n_features)), "velocity_intercept": np.full(10, bound)},
    ]


def outcome(g: Guard, rows: np.ndarray, model: dict, config: dict) -> tuple:
    """What the scientist learns of a call besides its values: success or the refusal, keys, shapes, finiteness.
    ``rows``: (n, 785) uint8, handed to the guard as their features on the config's map."""
    features = config.get("features", DEFAULT_FEATURES)
    try:
        result = g.call("ml_experiment", {features: vetted_data(rows, features)}, model, config)
    except Refused as e:
        return ("refused", str(e))
    return ("ok", tuple(sorted(result)), tuple(np.shape(result[k]) for k in sorted(result)),
            all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in result.values()))


@pytest.mark.parametrize("features", FEATURES)
def test_every_admitted_model_gives_a_finite_answer_of_one_shape_on_neighbouring_rows(tmp_path, features):
    """Totality: for models at the edges of the admitted range, the call succeeds with a finite answer
    of the same shape whether or not a row is in the data (one row removed, or one crafted row added)."""
    g = guard(tmp_path)
    rows = synthetic_shard(3000)
    crafted = np.zeros((1, 785), np.uint8)
    crafted[0, :784] = 255  # the row the overflow attack singled out: every pixel at its maximum
    config = on(features, {**DP, "noise_multiplier": 1e6})
    for model in adversarial_models(g.policy.model_bound, width(features)):
        seen = {outcome(g, neighbour, model, config) for neighbour in (rows, rows[1:], np.vstack([rows, crafted]))}
        assert len(seen) == 1, seen
        assert seen.pop()[0:1] == ("ok",)
        assert outcome(g, rows, model, config)[3] is True


def test_guard_charges_private_runs_before_they_run_and_not_the_mock(tmp_path):
    g = guard(tmp_path)
    before = g.ledger.spent
    config = g.admit("ml_experiment", ZEROS, DP, on_private_rows=False)
    assert g.ledger.spent == before and config["privacy"]["rows"] == g.ledger.row_count
    g.admit("ml_experiment", ZEROS, DP)
    assert g.ledger.spent == pytest.approx(epsilon([100.0, 20.0, 20.0], g.policy.delta))


def test_without_dp_the_row_minimum_still_applies(tmp_path):
    g = guard(tmp_path, epsilon=None, min_rows=500)
    assert g.admit("ml_experiment", ZEROS, {"holdout": 0.2}) == ML_EXPERIMENT.complete({"holdout": 0.2})
    for config in ({"holdout": 0.05}, {}):  # unset: the default holdout, 0.05, holds out 150 rows
        with pytest.raises(Refused, match="config would train or evaluate on 150 rows; this site's minimum is 500"):
            g.admit("ml_experiment", ZEROS, config)
    with pytest.raises(Refused, match=r"config holdout=0.999 is outside \[0, 0.5\]"):
        g.admit("ml_experiment", ZEROS, {"holdout": 0.999})


# --- the schemas, as the guard applies them -------------------------------------------------------

RANGED = [(dp, key) for dp, keys in ((False, ML_EXPERIMENT), (True, ML_EXPERIMENT_DP))
          for key in keys.keys if key.kind is not bool and key.high is not None]


@pytest.mark.parametrize("dp, key", RANGED, ids=[f"{'dp' if dp else 'plain'}-{key.name}" for dp, key in RANGED])
def test_the_guard_admits_each_schema_range_and_nothing_past_it(tmp_path, dp, key):
    g = guard(tmp_path, **({} if dp else {"epsilon": None}))
    features = "pixels" if key.name in PIXELS_ONLY else DEFAULT_FEATURES  # frequencies: of an image's pixels
    base, model = on(features, DP if dp else {}), zeros(width(features))
    low = g.policy.min_noise if key.low is None else key.low  # the noise floor is the owner's
    for value in (low, key.high):
        admitted = g.admit("ml_experiment", model, {**base, key.name: value}, on_private_rows=False)
        assert admitted[key.name] == value
    step = (lambda v, to: v + (1 if to > v else -1)) if key.kind is int else math.nextafter
    for value in (step(low, -math.inf), step(key.high, math.inf)):
        with pytest.raises(Refused, match=re.escape(f"config {key.name}={value!r} is outside [{low:g}, {key.high:g}]")):
            g.admit("ml_experiment", model, {**base, key.name: value}, on_private_rows=False)


def test_the_features_key_admits_each_map_and_nothing_else(tmp_path):
    g = guard(tmp_path)
    for features in FEATURES:
        admitted = g.admit("ml_experiment", zeros(width(features)), {**DP, "features": features},
                           on_private_rows=False)
        assert admitted["features"] == features
    for value in ("Scattering", "raw", 1, None):
        with pytest.raises(Refused, match=re.escape(f"config features={value!r} must be one of scattering, pixels")):
            g.admit("ml_experiment", ZEROS, {**DP, "features": value}, on_private_rows=False)


def test_frequencies_apply_to_pixels_only(tmp_path):
    """On scattering there is no image to take frequencies of: asking for them is refused, and the
    schema's default never reaches the vetted function."""
    g = guard(tmp_path)
    with pytest.raises(Refused, match=re.escape("config frequencies applies to features 'pixels' only, "
                                                "not 'scattering'")):
        g.admit("ml_experiment", ZEROS, {**DP, "frequencies": 14}, on_private_rows=False)
    assert "frequencies" not in g.admit("ml_experiment", ZEROS, DP, on_private_rows=False)
    pixels = g.admit("ml_experiment", zeros(width("pixels")), {**DP, "features": "pixels"}, on_private_rows=False)
    assert pixels["frequencies"] == ML_EXPERIMENT_DP["frequencies"].default


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("dp", [False, True])
def test_an_unset_key_runs_at_its_schema_default(tmp_path, dp, features):
    """What the vetted function gets from the guard: every key, the unset ones at the schema's default
    (on scattering, the default included, every key but the pixels-only ones)."""
    s = site(tmp_path, **({} if dp else {"epsilon": None}))
    g, model = s.guard, zeros(width(features))
    keys, required = (ML_EXPERIMENT_DP, {"local_steps": 1, "noise_multiplier": 20.0}) if dp else (ML_EXPERIMENT, {})
    required = on(features, required)
    unset = g.admit("ml_experiment", model, required, on_private_rows=False)
    complete = keys.complete(required)
    if features != "pixels":
        complete = {k: v for k, v in complete.items() if k not in PIXELS_ONLY}
    assert unset == g.admit("ml_experiment", model, complete, on_private_rows=False)
    expected = {**keys.defaults(), **required}
    if features != "pixels":
        expected = {k: v for k, v in expected.items() if k not in PIXELS_ONLY}
    assert unset["features"] == features
    assert {k: v for k, v in unset.items() if k != "privacy"} == expected
    if not dp:  # the same round either way (under DP the noise differs call to call)
        configs = (required, on(features, ML_EXPERIMENT.defaults()))
        a, b = (g.call("ml_experiment", s.features, model, c) for c in configs)
        assert all(np.array_equal(a[k], b[k]) for k in a if k != "seconds")


@pytest.mark.parametrize("function, config, reason", [
    ("ml_experiment", {"max_iter": 5}, "unknown config keys ['max_iter']; this site allows ['C', 'features', "
                                       "'holdout', "),
    ("lr_loss_grad", {"C": 1.0}, "unknown config keys ['C']; this site allows ['features']"),
    ("lr_loss_grad", {"features": "raw"}, "config features='raw' must be one of scattering, pixels"),
    ("ml_experiment", {"logit_adjust": 1}, "config logit_adjust=1 must be a bool"),
    ("ml_experiment", {"seed": 1.0}, "config seed=1.0 must be a int"),
])
def test_without_dp_the_guard_refuses_what_no_schema_admits(tmp_path, function, config, reason):
    with pytest.raises(Refused, match=re.escape(reason)):
        guard(tmp_path, epsilon=None).admit(function, ZEROS, config)


@pytest.mark.parametrize("what, reason", [
    ("ml_experiment", "config lr=200 is outside [0.0001, 100]"),
    ("secure aggregation", "round 1: the keys given for site-3 are not signed by site-3: [x]\nsecond line"),
])
def test_a_refusal_reads_back_from_the_error_text_pysyft_wraps_it_in(what, reason):
    from syft.types.errors import SyftException

    refusal = Refusal("site-1", what, reason)
    wrapped = f"Traceback (most recent call last):\n  ...\nsyft.types.errors.SyftException: " \
              f"{SyftException(public_message=str(refusal))}\n\nServer Trace: ..."
    assert Refusal.find(wrapped) == refusal and Refusal.find(str(refusal)) == refusal
    assert Refusal.find(refusal.line) is None  # without its tag: an error, not a refusal


# --- the scientist's plan -------------------------------------------------------------------------

def statuses(tmp_path, spent_first: float = 0.0, **policy) -> list[dict]:
    sites = local_sites([synthetic_shard(3000), synthetic_shard(3000, seed=1)], owner_policy(**policy), tmp_path)
    if spent_first:
        sites[0].guard.ledger.charge(noise_for(spent_first, sites[0].guard.policy.delta, 1), 1, "call")
    return [s.privacy() for s in sites]


def test_plan_spends_what_is_left_exactly(tmp_path):
    result = plan(statuses(tmp_path, spent_first=0.4), releases=120)
    tight = next(b for b in result.budgets if b.site == "site-1")
    assert result.total_after(tight) == pytest.approx(1.0, rel=1e-6)
    assert all(result.total_after(b) <= 1.0 for b in result.budgets)


def test_plan_refuses_more_than_a_site_has_left(tmp_path):
    with pytest.raises(ConfigError, match=r"epsilon 0.9: site-1 has 0.4\d+ of its 1 left"):
        plan(statuses(tmp_path, spent_first=0.5), releases=120, epsilon=0.9)


def test_plan_without_dp_refuses_an_epsilon(tmp_path):
    assert plan(statuses(tmp_path, epsilon=None), releases=10) is None
    with pytest.raises(ConfigError, match="no site enforces differential privacy"):
        plan(statuses(tmp_path / "b", epsilon=None), releases=10, epsilon=1.0)


# --- the DP step inside the site ------------------------------------------------------------------

def private(config: dict, rows: int = 3000) -> dict:
    """A DP config as the site's guard completes it for the vetted function (the pixels-only keys
    only on pixels)."""
    complete = ML_EXPERIMENT_DP.complete(config)
    if complete["features"] != "pixels":
        complete = {k: v for k, v in complete.items() if k not in PIXELS_ONLY}
    return {**complete, "privacy": {"clip": 1.0, "rows": rows}}


@pytest.mark.parametrize("features", FEATURES)
def test_dp_step_returns_only_the_model_and_fresh_noise_every_call(features):
    data = vetted_data(synthetic_shard(3000), features)
    a, b = (ml_experiment(data, zeros(width(features)), private(on(features, DP))) for _ in range(2))
    assert set(a) == {"coef", "intercept", "velocity_coef", "velocity_intercept", "n_samples"}
    assert a["coef"].shape == a["velocity_coef"].shape == (10, width(features))
    assert a["n_samples"] == 3000 and not np.array_equal(a["coef"], b["coef"])  # OS entropy, not a seed


@pytest.mark.parametrize("k", [1, 14, 28])
def test_a_noisy_step_moves_the_model_only_within_the_k_lowest_frequencies(k):
    """Signal and noise both live in the k x k lowest 2-D DCT frequencies of the image (k = 28: all)."""
    from scipy.fft import dctn

    step = ml_experiment(vetted_data(synthetic_shard(3000), "pixels"), zeros(width("pixels")),
                         private({**DP, "features": "pixels", "local_steps": 1, "momentum": 0.0, "frequencies": k}))
    spectrum = dctn(step["coef"].reshape(10, 28, 28), axes=(1, 2), norm="ortho")
    inside = np.zeros((28, 28), bool)
    inside[:k, :k] = True
    scale = np.abs(spectrum).max()
    assert np.abs(spectrum[:, ~inside]).max(initial=0.0) < 1e-9 * scale
    assert (np.abs(spectrum[:, inside]) > 1e-9 * scale).all()  # the noise fills all k * k of them


@pytest.mark.parametrize("features", FEATURES)
def test_one_row_moves_a_noiseless_step_by_at_most_the_clip(features):
    """The sensitivity the accountant assumes: adding any one row, however extreme, changes the
    clipped gradient sum (and so one step of size lr / rows) by at most clip."""
    shard = synthetic_shard(3000)
    extreme = np.full((1, 785), 255, np.uint8)
    extreme[0, 784] = 3
    config = private(on(features, {**DP, "local_steps": 1, "momentum": 0.0, "noise_multiplier": 1e-12}))
    params = {"coef": np.random.default_rng(0).normal(0, 5, (10, width(features))), "intercept": np.zeros(10)}
    without = ml_experiment(vetted_data(shard, features), params, config)
    with_row = ml_experiment(vetted_data(np.vstack([shard, extreme]), features), params, config)
    moved = np.sqrt(np.sum((with_row["coef"] - without["coef"]) ** 2)
                    + np.sum((with_row["intercept"] - without["intercept"]) ** 2))
    assert 0 < moved <= 1.0 * 1.0 / 3000 * (1 + 1e-3)


@pytest.mark.parametrize("features", FEATURES)
def test_one_step_rounds_apply_the_sites_momentum_step_to_the_average(tmp_path, monkeypatch, features):
    """With one noisy step per round (always, with secure aggregation) a site gets the model alone and
    only its step direction is summed; the scientist's momentum on the average gives the model and
    velocity that averaging the sites' own momentum steps gives (the same noise drawn in both)."""
    from fl_syft.scientist.algorithms import FedAvg
    from fl_syft.scientist.algorithms.private import Private, PrivateSettings

    data = {**plan(statuses(tmp_path), releases=2).to_dict(), "rounds": 2}
    frequencies = 10 if features == "pixels" else None  # of an image: pixels only
    algorithm = Private(FedAvg(features=features), data,
                        PrivateSettings(local_steps=1, lr=3.0, momentum=0.8, frequencies=frequencies))
    shards = [vetted_data(synthetic_shard(3000), features), vetted_data(synthetic_shard(2000, seed=1), features)]
    rows = [2990, 2010]  # noisy counts
    rng = np.random.default_rng(5)
    n_features = width(features)
    model = {"coef": rng.normal(0, 0.01, (10, n_features)), "intercept": rng.normal(0, 0.1, 10),
             "velocity_coef": rng.normal(0, 0.01, (10, n_features)), "velocity_intercept": rng.normal(0, 0.1, 10)}

    def answers(params: dict, config: dict) -> list[dict]:
        out = []
        for i, (shard, n) in enumerate(zip(shards, rows, strict=True)):
            monkeypatch.setattr(np.random, "default_rng", lambda *_, i=i: np.random.Generator(np.random.PCG64(i)))
            out.append(ml_experiment(shard, params, private(config, rows=n)))
        return out

    sent, config = algorithm.configure(model)
    assert set(sent) == {"coef", "intercept"}  # the momentum stays with the scientist
    assert config["features"] == features and ("frequencies" in config) == (features == "pixels")
    got = algorithm.aggregate(model, algorithm.summed.of(answers(sent, config)))
    own = answers(model, config)  # each site's own momentum step from the full state, averaged by rows
    weights = np.array(rows, np.float64) / sum(rows)
    assert set(got) == set(model)
    for key in model:
        expected = np.einsum("s,s...->...", weights, np.stack([r[key] for r in own]))
        np.testing.assert_allclose(got[key], expected, rtol=1e-9, atol=1e-12)
