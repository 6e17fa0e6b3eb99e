import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import PLAIN

from fl_syft.cli import main
from fl_syft.common.data import load_mnist
from fl_syft.common.features import DEFAULT as DEFAULT_FEATURES
from fl_syft.common.features import MAPS
from fl_syft.scientist.evaluate import features_of_test_set as features_of
from fl_syft.scientist.evaluate import score
from fl_syft.scientist.outputs import load_model


def test_simulate_improves_over_rounds_and_saves_a_consistent_model(small_idx, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["simulate", *PLAIN, "--data", f"idx:{small_idx}", "--sites", "3", "--rounds", "4",
               "--local-iters", "3", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    acc = [r["global_test_accuracy"] for r in metrics["rounds"]]
    assert len(acc) == 4 and acc[-1] > acc[0] + 0.02
    assert metrics["final"]["round"] == 4 and metrics["config"]["partition"]["sites"] == 3
    first = metrics["rounds"][0]
    assert set(first["sites"]) == {"site-1", "site-2", "site-3"}
    assert {"round", "global_test_accuracy", "global_test_loss", "seconds"} <= set(first)
    data = load_mnist(f"idx:{small_idx}")
    params, fmap = load_model(out / "model.npz")
    assert fmap is MAPS[DEFAULT_FEATURES] and metrics["config"]["features"] == fmap.spec  # the default map, saved
    assert params["coef"].shape == (10, fmap.width)
    recomputed = score(params, features_of(fmap, data.X_test), data.y_test)
    assert recomputed["accuracy"] == metrics["final"]["global_test_accuracy"]
    capsys.readouterr()
    assert main(["score", str(out / "model.npz"), "--data", f"idx:{small_idx}"]) == 0  # anyone can score it
    printed = capsys.readouterr().out
    assert f"accuracy {100 * recomputed['accuracy']:.2f}%" in printed
    assert f"on {len(data.y_test)} test images" in printed


def test_simulate_on_pixels_saves_a_model_on_pixels(small_idx, tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", *PLAIN, "--data", f"idx:{small_idx}", "--sites", "2", "--rounds", "2",
                 "--local-iters", "3", "--features", "pixels", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    params, fmap = load_model(out / "model.npz")
    assert fmap is MAPS["pixels"] and metrics["config"]["features"] == fmap.spec
    assert params["coef"].shape == (10, 784)
    data = load_mnist(f"idx:{small_idx}")
    recomputed = score(params, features_of(fmap, data.X_test), data.y_test)
    assert recomputed["accuracy"] == metrics["final"]["global_test_accuracy"] > 0.8


@pytest.mark.parametrize("args, message", [
    (["--sites", "0"], "--sites must be at least 1, got 0"),
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["--partition", "dirichlet", "--alpha", "0"], "--alpha must be > 0, got 0.0"),
    (["--partition", "sizes", "--sizes", "2000,2000"], "--sizes add up to 4000 rows but the data has 3000"),
    (["--data", "s3://mnist"], "unknown data source 's3://mnist'"),
    (["--local-iters", "-1"], "--local-iters -1 is outside [1, 1000] (what the sites admit)"),
    (["--C", "0"], "--C 0.0 is outside [0.0001, 10000] (what the sites admit)"),
    (["--sizes", "1,x"], "expected comma-separated integers"),
    (["--rounds", "five"], "invalid int value: 'five'"),
    (["--features", "raw"], "invalid choice: 'raw' (choose from 'scattering', 'pixels')"),
    # a flag the chosen partition would ignore is refused, not silently dropped
    (["--alpha", "0.1", "--sites", "10"], "--alpha is for --partition dirichlet, not iid"),
    (["--sizes", "100,200"], "--sizes is for --partition sizes, not iid"),
    (["--scenario", "quantity-skew-4", "--sites", "3"], "--sites 3 does not match --sizes (4 sites)"),
    (["--scenario", "dirichlet-0.5-10", "--partition", "iid"], "--partition iid contradicts --scenario dirichlet-0.5"),
    (["--noisy-sites", "2"], "--noise-std and --noisy-sites go together"),
    (["--noise-std", "50"], "--noise-std and --noisy-sites go together"),
    (["--algorithm", "lbfgs", "--local-iters", "5"], "--local-iters: not a setting of --algorithm lbfgs: drop it"),
    (["--algorithm", "lbfgs", "--no-logit-adjust", "--holdout", "0.1"],
     "--holdout, --logit-adjust: not a setting of --algorithm lbfgs"),
])
def test_bad_values_one_line_exit_2(args, message, small_idx, capsys):
    argv = ["simulate", *PLAIN, "--data", f"idx:{small_idx}", *args] if "--data" not in args else ["simulate", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_corrupted_data_file_exit_1(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    assert main(["simulate", "--data", f"idx:{tmp_path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "train-images-idx3-ubyte" in err and len(err.splitlines()) == 1


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "fl_syft", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "simulate" in done.stdout


def test_simulate_is_deterministic(small_idx, tmp_path):
    for name in ("a", "b"):
        assert main(["simulate", *PLAIN, "--min-rows", "10", "--data", f"idx:{small_idx}", "--rounds", "2",
                     "--local-iters", "2",
                     "--partition", "dirichlet", "--sites", "3", "--out", str(tmp_path / name)]) == 0
    (a, _), (b, _) = (load_model(tmp_path / n / "model.npz") for n in ("a", "b"))
    assert np.array_equal(a["coef"], b["coef"])


def test_no_logit_adjust_reaches_the_sites_and_the_report(small_idx, tmp_path):
    runs = {}
    for name, flag in (("on", []), ("off", ["--no-logit-adjust"])):
        out = tmp_path / name
        assert main(["simulate", *PLAIN, "--min-rows", "10", "--data", f"idx:{small_idx}", "--rounds", "1",
                     "--local-iters", "2",
                     "--partition", "dirichlet", "--alpha", "0.1", "--sites", "3", *flag, "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["config"]["training"]["logit_adjust"] is (name == "on")
        assert f"| label-prior (logit) adjustment | {name} |" in (out / "report.md").read_text()
        runs[name] = load_model(out / "model.npz")[0]
    assert not np.allclose(runs["on"]["intercept"], runs["off"]["intercept"])


@pytest.mark.parametrize("kind, flags", [
    ("local_only", [*PLAIN, "--local-iters", "2"]),
    ("private_alone", ["--min-rows", "50", "--dp-epsilon", "3", "--epsilon", "1"]),  # under DP, at the run's epsilon
])
def test_baselines_show_progress_and_their_time(small_idx, tmp_path, capsys, kind, flags):
    """Each site alone can take longer than the rounds: a bar while it runs, and its wall time per
    site in metrics.json and the report's timings."""
    out = tmp_path / "run"
    assert main(["simulate", *flags, "--data", f"idx:{small_idx}", "--sites", "2", "--rounds", "2",
                 "--features", "pixels", "--baselines", "--out", str(out)]) == 0
    assert re.search(r"baselines: each site alone: +\d+%\|", capsys.readouterr().err)  # the bar, not the log line
    seconds = [v["seconds"] for v in json.loads((out / "metrics.json").read_text())["baselines"][kind].values()]
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    timings = (out / "report.md").read_text().split("## Timings", 1)[1]
    assert (f"- baselines: each site alone {np.median(seconds):.1f} s per site (median; {sum(seconds):.1f} s summed"
            in timings)


def test_ctrl_c_in_a_simulation_says_it_cannot_be_resumed_and_an_out_dir_hint_names_no_resume(small_idx, tmp_path,
                                                                                             capsys):
    import signal
    import time

    out = tmp_path / "sim"
    sim = subprocess.Popen([sys.executable, "-m", "fl_syft", "simulate", "--data", f"idx:{small_idx}", "--features",
                            "pixels", "--rounds", "200", "--no-dp", "--local-iters", "2", "--out", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    sim.send_signal(signal.SIGINT)
    _, err = sim.communicate(timeout=60)
    assert sim.returncode == 130
    assert err.strip().splitlines()[-1] == ("fl-syft: interrupted (a simulation keeps no state to resume from: "
                                            "run it again)")
    # simulate has no --resume: the full-directory hint does not offer one.
    assert main(["simulate", "--data", f"idx:{small_idx}", "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "already holds a run" in line and "--resume" not in line and "--overwrite" in line
