import numpy as np
import pytest
from conftest import width

from fl_syft.common.features import DEFAULT as DEFAULT_FEATURES
from fl_syft.scientist.aggregate import SiteResultError, validate_result
from fl_syft.scientist.algorithms import FedAvg

W = width(DEFAULT_FEATURES)  # FedAvg's default feature map: scattering, 3969 features
ZERO = {"coef": np.zeros((10, W)), "intercept": np.zeros(10)}


def fedavg(results: dict, received: dict = ZERO) -> dict:
    """FedAvg's round as the runner does it: each answer validated, summed, then aggregated."""
    algorithm = FedAvg()
    for site, result in results.items():
        algorithm.validate(site, result)
    return algorithm.aggregate(received, algorithm.summed.of(list(results.values())))


def _result(value: float, n: int, classes=range(10)) -> dict:
    """A valid site result holding ``classes`` (n rows spread over them)."""
    counts = np.zeros(10, np.int64)
    counts[list(classes)] = n // len(classes)
    counts[min(classes)] += n - counts.sum()
    return {"coef": np.full((10, W), value), "intercept": np.full(10, value), "n_samples": n,
            "class_counts": counts}


def test_sample_weighted_mean():
    avg = fedavg({"a": _result(1.0, 100), "b": _result(4.0, 300)})
    assert np.allclose(avg["coef"], 3.25) and np.allclose(avg["intercept"], 3.25)


def test_single_site_is_identity():
    r = _result(0.5, 70)
    assert np.array_equal(fedavg({"a": r})["coef"], r["coef"])


def test_class_rows_average_only_over_sites_holding_the_class():
    a = _result(1.0, 100, classes=range(5))
    b = _result(3.0, 100)
    avg = fedavg({"a": a, "b": b})
    assert np.allclose(avg["coef"][:5], 2.0) and np.allclose(avg["coef"][5:], 3.0)


def test_class_no_site_holds_keeps_the_received_row():
    received = {"coef": np.full((10, W), 7.0), "intercept": np.full(10, 7.0)}
    avg = fedavg({"a": _result(1.0, 100, range(9)), "b": _result(3.0, 300, range(9))}, received)
    assert np.allclose(avg["coef"][9], 7.0) and np.allclose(avg["intercept"][9], 7.0)
    assert np.allclose(avg["coef"][:9], 2.5)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(coef=np.zeros((10, W - 1))), rf"coef has shape \(10, {W - 1}\), expected \(10, {W}\)"),
    (lambda r: r.update(coef=np.zeros((10, width("pixels")))), rf"coef has shape \(10, 784\), expected \(10, {W}\)"),
    (lambda r: r["intercept"].__setitem__(3, np.nan), "intercept contains NaN"),
    (lambda r: r["coef"].__setitem__((0, 0), np.inf), "coef contains NaN, infinite"),
    (lambda r: r.update(n_samples=0), "n_samples must be a positive integer"),
    (lambda r: r.update(n_samples=True), "n_samples must be a positive integer"),
    (lambda r: r.pop("intercept"), r"missing keys \['intercept'\]"),
    (lambda r: r.update(class_counts=np.array([-1] * 10)), "class_counts must be 10 non-negative"),
    (lambda r: r.pop("class_counts"), r"missing keys \['class_counts'\]"),
    (lambda r: r["class_counts"].__setitem__(0, 99), "class_counts add up to 108, n_samples is 10"),
])
def test_bad_results_name_the_site(mutate, message):
    bad = _result(1.0, 10)
    mutate(bad)
    with pytest.raises(SiteResultError, match=rf"site 'site-2' returned an invalid result: {message}"):
        fedavg({"site-1": _result(1.0, 10), "site-2": bad})


def test_non_dict_result():
    with pytest.raises(SiteResultError, match="expected a dict, got ndarray"):
        validate_result("s", np.zeros((5, 785)), W)


def test_settings_outside_what_the_sites_admit_are_refused_before_anything_is_sent():
    from fl_syft.common.errors import ConfigError
    from fl_syft.common.protocol import ML_EXPERIMENT
    from fl_syft.scientist.algorithms.fedavg import FedAvgSettings
    from fl_syft.scientist.algorithms.private import PrivateSettings

    with pytest.raises(ConfigError, match=r"lr 200 is outside \[0.0001, 100\]"):
        PrivateSettings(lr=200).check()
    with pytest.raises(ConfigError, match=r"local_iters 0 is outside \[1, 1000\]"):
        FedAvgSettings(local_iters=0).check()
    assert FedAvg().configure({})[1] == ML_EXPERIMENT.defaults()  # the scientist's defaults are the site's
    assert ML_EXPERIMENT.defaults()["features"] == DEFAULT_FEATURES == "scattering"
    assert FedAvg(features="pixels").configure({})[1] == {**ML_EXPERIMENT.defaults(), "features": "pixels"}


def test_a_model_on_pixels_is_averaged_on_its_own_width():
    algorithm = FedAvg(features="pixels")
    results = {}
    for site, value in (("a", 1.0), ("b", 4.0)):
        result = _result(value, 100 if site == "a" else 300)
        result["coef"] = np.full((10, width("pixels")), value)
        algorithm.validate(site, result)
        results[site] = result
    avg = algorithm.aggregate({}, algorithm.summed.of(list(results.values())))
    assert avg["coef"].shape == (10, 784) and np.allclose(avg["coef"], 3.25)
    with pytest.raises(SiteResultError, match=rf"coef has shape \(10, {W}\), expected \(10, 784\)"):
        algorithm.validate("c", _result(1.0, 10))
