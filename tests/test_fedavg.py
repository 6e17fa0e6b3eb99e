import numpy as np
import pytest

from fl_syft.fedavg import SiteResultError, fedavg, validate_result


def _result(value: float, n: int, counts=None) -> dict:
    r = {"coef": np.full((10, 784), value), "intercept": np.full(10, value), "n_samples": n}
    if counts is not None:
        r["class_counts"] = np.asarray(counts)
    return r


def test_sample_weighted_mean():
    avg = fedavg({"a": _result(1.0, 100), "b": _result(4.0, 300)})
    assert np.allclose(avg["coef"], 3.25) and np.allclose(avg["intercept"], 3.25)


def test_single_site_is_identity():
    r = _result(0.5, 7)
    assert np.array_equal(fedavg({"a": r})["coef"], r["coef"])


def test_class_rows_average_only_over_sites_holding_the_class():
    a = _result(1.0, 100, counts=[5] * 5 + [0] * 5)  # holds classes 0-4
    b = _result(3.0, 100, counts=[5] * 10)
    avg = fedavg({"a": a, "b": b})
    assert np.allclose(avg["coef"][:5], 2.0) and np.allclose(avg["coef"][5:], 3.0)


def test_class_no_site_holds_is_plain_average():
    counts = [5] * 9 + [0]
    avg = fedavg({"a": _result(1.0, 100, counts), "b": _result(3.0, 300, counts)})
    assert np.allclose(avg["coef"][9], 2.5)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(coef=np.zeros((10, 783))), r"coef has shape \(10, 783\)"),
    (lambda r: r["intercept"].__setitem__(3, np.nan), "intercept contains NaN"),
    (lambda r: r["coef"].__setitem__((0, 0), np.inf), "coef contains NaN, infinite"),
    (lambda r: r.update(n_samples=0), "n_samples must be a positive integer"),
    (lambda r: r.update(n_samples=True), "n_samples must be a positive integer"),
    (lambda r: r.pop("intercept"), r"missing keys \['intercept'\]"),
    (lambda r: r.update(class_counts=np.array([-1] * 10)), "class_counts must be 10 non-negative"),
])
def test_bad_results_name_the_site(mutate, message):
    bad = _result(1.0, 10)
    mutate(bad)
    with pytest.raises(SiteResultError, match=rf"site 'site-2' returned an invalid result: {message}"):
        fedavg({"site-1": _result(1.0, 10), "site-2": bad})


def test_non_dict_result():
    with pytest.raises(SiteResultError, match="expected a dict, got ndarray"):
        validate_result("s", np.zeros((5, 785)))


def test_empty():
    with pytest.raises(ValueError, match="at least one site"):
        fedavg({})
