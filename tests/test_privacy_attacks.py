"""Attacks on record-level DP, each by a plain PySyft client (no fl_syft) against real datasites.

The attacker gets ml_experiment approved unchanged and calls it with configs, models and call
patterns of their own. A reconstruction is scored as in ``../shared/notes/privacy.md``: the
best Pearson r between any candidate vector and any real private row of the site. Each
attack's construction is first shown to work without the noise (in-process, same clipping),
so a low score through the site means the site's policy stopped it, not that the attack was weak.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import vetted_data
from syft_helpers import login, running_deployment

from fl_syft.common.accounting import epsilon, noise_for
from fl_syft.common.data import load_mnist
from fl_syft.common.partition import PartitionSpec, make_shards
from fl_syft.common.protocol import ML_EXPERIMENT_DP
from fl_syft.owner.launch import ADMIN_EMAIL
from fl_syft.owner.policy import owner_policy
from fl_syft.vetted.local_training import ml_experiment

pytestmark = pytest.mark.syft
RECOGNISABLE = 0.6  # a normal call's class rows reach ~0.55 (class averages); a leaked row ~1.0

ATTACKER = r'''
import contextlib, io, json, sys, threading, time
import numpy as np
import syft as sy

{source}

spec = json.loads(open(sys.argv[1]).read())
with contextlib.redirect_stdout(io.StringIO()):
    client = sy.login(url=spec["url"], port=spec["port"], email=spec["email"], password=spec["password"])
    asset = client.datasets[0].assets[0]
    try:
        policy = sy.MixedInputPolicy(client=client, data=asset, global_params=dict, config=dict)
        client.code.request_code_execution(sy.syft_function(input_policy=policy)(ml_experiment))
    except Exception:
        pass  # this account asked before
while not any("APPROVED" in str(r.status) for r in client.requests.get_all()):
    time.sleep(0.2)
params = {{k: v for k, v in np.load(spec["params"]).items()}} if spec.get("params") else {{}}

def call(config):
    try:  # (stdout stays redirected for the whole run: redirect_stdout is not thread-safe)
        result = client.code.ml_experiment(data=asset, global_params=params, config=config).get()
        return {{"ok": True, "coef": np.asarray(result["coef"]).tolist(),
                "intercept": np.asarray(result["intercept"]).tolist(), "n_samples": int(result["n_samples"])}}
    except Exception as e:
        return {{"ok": False, "error": " ".join(str(getattr(e, "public_message", None) or e).split())}}

results = []
sys.stdout = io.StringIO()  # PySyft's banners
if spec.get("concurrent"):
    threads = [threading.Thread(target=lambda: results.append(call(spec["config"]))) for _ in range(spec["concurrent"])]
    for t in threads: t.start()
    for t in threads: t.join()
else:
    for _ in range(spec.get("repeat", 1)):
        results.append(call(spec["config"]))
        if not results[-1]["ok"]:
            break
open(spec["out"], "w").write(json.dumps({{"results": results,
                                          "fl_syft": any(m.startswith("fl_syft") for m in sys.modules)}}))
'''


def attack(tmp_path: Path, deployment, email: str, password: str, config: dict, params: dict | None = None,
           site: int = 0, **how) -> list[dict]:
    """Run the plain-PySyft attacker as ``email`` against site ``site``; its per-call results."""
    address = json.loads(deployment.connection_file.read_text())["datasites"][site]
    spec = {"url": address["url"], "port": address["port"], "email": email, "password": password,
            "config": config, "out": str(tmp_path / "attack.json"), **how}
    if params is not None:
        np.savez(tmp_path / "params.npz", **params)
        spec["params"] = str(tmp_path / "params.npz")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    script = tmp_path / "attacker.py"
    script.write_text(ATTACKER.format(source=textwrap.dedent(inspect.getsource(ml_experiment))))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "spec.json")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "attack.json").read_text())
    assert report["fl_syft"] is False
    return report["results"]


def best_r(candidates: np.ndarray, rows: np.ndarray) -> float:
    """Max Pearson r between any candidate (k, 784) and any real row (n, 784)."""
    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64)
        a = a - a.mean(axis=1, keepdims=True)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    finite = candidates[np.all(np.isfinite(candidates), axis=1)]
    return float((unit(finite) @ unit(rows).T).max()) if len(finite) else 0.0


def gradient_candidates(sent: dict, result: dict, rows_published: int, lr: float) -> np.ndarray:
    """What one noisy step reveals: the gradient sum g = (sent - returned) * rows / lr, as images
    (its class rows) and by Phong et al.'s division (row j of dW over dB_j: a lone row exactly)."""
    gW = (np.asarray(sent["coef"]) - np.asarray(result["coef"])) * rows_published / lr
    gb = (np.asarray(sent["intercept"]) - np.asarray(result["intercept"])) * rows_published / lr
    with np.errstate(divide="ignore", invalid="ignore"):  # a class with no gradient: dropped as non-finite
        return np.vstack([gW, gW / gb[:, None]])


def isolating_model(shard: np.ndarray) -> dict:
    """A model under which one row alone has a gradient (the others' vanish): an informed
    adversary's best case (cf. "Robbing the Fed", trap weights). A separating fit of the rows,
    scaled up, with the one row of smallest margin pushed across its class boundary."""
    from sklearn.linear_model import LogisticRegression

    X, y = shard[:, :784] / 255.0, shard[:, 784].astype(int)  # on pixels (the attack's config asks for them)
    fit = LogisticRegression(C=1e4, max_iter=3000).fit(X, y)
    coef, intercept = fit.coef_.copy(), fit.intercept_.copy()
    z = X @ coef.T + intercept
    own = z[np.arange(len(y)), y]
    rival = np.where(np.eye(10, dtype=bool)[y], -np.inf, z).max(axis=1)
    margin = own - rival
    assert margin.min() > 0, "the rows must be separable for this construction"
    target = int(np.argmin(margin))
    same = np.sort(margin[y == y[target]])
    intercept[y[target]] -= (same[0] + same[1]) / 2  # flips the target and nothing else of its class
    scale = 40.0 / ((same[1] - same[0]) / 2)
    return {"coef": coef * scale, "intercept": intercept * scale, "target": target}


@pytest.fixture(scope="module")
def site_rows(small_idx):
    small = load_mnist(f"idx:{small_idx}")
    return make_shards(small.X_train, small.y_train, PartitionSpec(sites=2))[0]


@pytest.fixture(scope="module")
def deployment(small_idx, tmp_path_factory):
    yield from running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("dp"), policy=owner_policy())


@pytest.fixture(scope="module")
def scientist(deployment):
    secrets = json.loads((deployment.state / "secrets.json").read_text())
    return "scientist@fl-syft.example.com", secrets["ds_password"]


def status(deployment, index: int = 0) -> dict:
    """The site's published privacy status, as any logged-in user reads it (the owner's API endpoint)."""
    answer = login(deployment.connection_file, index).api.services.api.call("fl_syft.privacy")
    return answer if isinstance(answer, dict) else answer.get()


def test_1_a_tiny_training_split_is_refused_and_costs_nothing(deployment, scientist, tmp_path):
    before = status(deployment)["epsilon_spent"]
    results = attack(tmp_path, deployment, *scientist, {"holdout": 0.999, "local_iters": 1000, "C": 1e4})
    assert results[0]["ok"] is False
    assert "site-1 refused ml_experiment: unknown config keys ['C', 'holdout', 'local_iters']" in results[0]["error"]
    assert status(deployment)["epsilon_spent"] == before


def test_2_a_crafted_model_that_isolates_one_row_gets_nothing_recognisable(deployment, scientist, site_rows,
                                                                           tmp_path):
    crafted = isolating_model(site_rows)
    params = {"coef": crafted["coef"], "intercept": crafted["intercept"]}
    rows = status(deployment)["rows"]
    sigma = noise_for(0.5, 1e-5, 1)  # half the budget on one step: as much signal as one call gets
    # On pixels, every pixel (frequencies 28): the row's whole image in the update; fewer frequencies
    # keep the same noise per coordinate on less of the row.
    config = {"features": "pixels", "local_steps": 1, "lr": 1.0, "momentum": 0.0, "l2": 0.0, "frequencies": 28,
              "noise_multiplier": sigma}
    # The construction works: the same call without the noise hands the row over.
    noiseless = ml_experiment(vetted_data(site_rows, "pixels"), params, {**config, "noise_multiplier": 1e-12,
                                                                         "privacy": {"clip": 1.0, "rows": rows}})
    leaked = best_r(gradient_candidates(params, noiseless, rows, 1.0), site_rows[:, :784])
    assert leaked > 0.99
    # Through the site: the row's clipped gradient drowns in the noise.
    [result] = attack(tmp_path, deployment, *scientist, config, params)
    assert result["ok"], result
    got = best_r(gradient_candidates(params, result, rows, 1.0), site_rows[:, :784])
    print(f"\ncrafted model: r = {leaked:.3f} without noise, {got:.3f} through the DP site")
    assert got < RECOGNISABLE


def test_3_repeating_a_call_to_average_the_noise_away_exhausts_the_budget_first(deployment, scientist,
                                                                                site_rows, tmp_path):
    crafted = isolating_model(site_rows)
    params = {"coef": crafted["coef"], "intercept": crafted["intercept"]}
    rows = status(deployment)["rows"]
    config = {"features": "pixels", "local_steps": 1, "lr": 1.0, "momentum": 0.0, "l2": 0.0, "noise_multiplier": 12.0}
    results = attack(tmp_path, deployment, *scientist, config, params, repeat=200)
    answered = [r for r in results if r["ok"]]
    assert 1 < len(answered) < 200 and not results[-1]["ok"]
    assert "site-1 refused ml_experiment: privacy budget exhausted: epsilon 0." in results[-1]["error"]
    assert "of 1 is spent and this call needs" in results[-1]["error"]
    averaged = np.mean([gradient_candidates(params, r, rows, 1.0) for r in answered], axis=0)
    got = best_r(averaged, site_rows[:, :784])
    print(f"\n{len(answered)} identical calls answered, then refused; averaged: r = {got:.3f}")
    assert got < RECOGNISABLE
    assert status(deployment)["epsilon_spent"] <= 1.0


def test_4_a_second_account_gets_no_fresh_budget(deployment, tmp_path):
    secrets = json.loads((deployment.state / "secrets.json").read_text())
    admin = login(deployment.connection_file, 0, email=ADMIN_EMAIL, password=secrets["admin_password"])
    admin.users.create(name="Second", email="second@example.com", password="second-pw-1",
                       password_verify="second-pw-1")
    config = {"local_steps": 1, "lr": 1.0, "momentum": 0.0, "l2": 0.0, "noise_multiplier": 12.0}
    [result] = attack(tmp_path, deployment, "second@example.com", "second-pw-1", config)
    assert not result["ok"] and "privacy budget exhausted" in result["error"]


def test_5_a_restart_between_calls_keeps_what_was_spent(deployment, scientist, tmp_path):
    spent = status(deployment)["epsilon_spent"]
    deployment.restart("site-1")
    assert status(deployment)["epsilon_spent"] == pytest.approx(spent, rel=1e-12)
    config = {"local_steps": 1, "lr": 1.0, "momentum": 0.0, "l2": 0.0, "noise_multiplier": 12.0}
    [result] = attack(tmp_path, deployment, *scientist, config)
    assert not result["ok"] and "privacy budget exhausted" in result["error"]
    charges = [json.loads(line) for line in (deployment.state / "site-1" / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in charges].count("charged") >= 3  # the row count and the calls, audited
    assert {e["requester"] for e in charges if e["event"] == "charged" and "requester" in e} == {scientist[0]}


def test_6_concurrent_calls_cannot_both_pass_when_only_one_fits(small_idx, tmp_path):
    fresh = running_deployment(f"idx:{small_idx}", tmp_path / "state", policy=owner_policy())
    deployment = next(fresh)
    try:
        secrets = json.loads((deployment.state / "secrets.json").read_text())
        sigma = noise_for(0.8, 1e-5, 1)  # one call fits in the budget of 1 (0.80 with the row count), two do not (1.17)
        config = {"local_steps": 1, "lr": 1.0, "momentum": 0.0, "l2": 0.0, "noise_multiplier": sigma}
        results = attack(tmp_path, deployment, "scientist@fl-syft.example.com", secrets["ds_password"], config,
                         concurrent=6)
        assert sorted(r["ok"] for r in results) == [False] * 5 + [True]
        spent = status(deployment)["epsilon_spent"]
        assert spent == pytest.approx(epsilon([100.0, sigma], 1e-5), rel=1e-9) and spent <= 1.0
    finally:
        fresh.close()


def test_the_site_draws_its_own_noise(site_rows, tmp_path):
    """A config cannot carry a seed (the site's guard refuses it): two identical calls give different answers."""
    from fl_syft.owner.guard import Refused
    from fl_syft.simulate import local_sites

    asked = {"local_steps": 1, "lr": 1.0, "momentum": 0.0, "l2": 0.0, "noise_multiplier": 5.0}
    guard = local_sites([site_rows], owner_policy(), tmp_path)[0].guard
    config = guard.admit("ml_experiment", {}, asked, on_private_rows=False)  # as the site completes it (uncharged)
    assert {k: v for k, v in config.items() if k != "privacy"} == \
        {k: v for k, v in ML_EXPERIMENT_DP.complete(asked).items() if k != "frequencies"}  # default: scattering
    data = vetted_data(site_rows, config["features"])
    assert not np.array_equal(ml_experiment(data, {}, config)["coef"], ml_experiment(data, {}, config)["coef"])
    with pytest.raises(Refused, match=r"unknown config keys \['seed'\]"):
        guard.admit("ml_experiment", {}, {**asked, "seed": 0})
