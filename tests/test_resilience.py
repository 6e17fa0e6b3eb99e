"""Crashes mid-run, resume, dropouts and restarts with kept state, on real datasites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import error_line
from syft_helpers import audit, login, running_deployment

from fl_syft.cli import main
from fl_syft.scientist.outputs import load_model

pytestmark = pytest.mark.syft


@pytest.fixture(scope="module")
def deployment(small_idx, tmp_path_factory):
    yield from running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("state"))


def run_args(deployment, small_idx, out, *extra) -> list[str]:
    return ["run", "--connection", str(deployment.connection_file), "--data", f"idx:{small_idx}",
            "--local-iters", "3", "--out", str(out), "--retries", "1", "--retry-backoff", "0.2", *extra]


def test_killed_then_resumed_run_equals_uninterrupted(deployment, small_idx, tmp_path):
    assert main(run_args(deployment, small_idx, tmp_path / "ref", "--rounds", "8")) == 0

    out = tmp_path / "interrupted"
    run = subprocess.Popen([sys.executable, "-m", "fl_syft", *run_args(deployment, small_idx, out, "--rounds", "8")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    deployment.procs["site-2"].kill()  # crash one datasite mid-run
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert "site-2" in err and "--resume" in err and "Traceback" not in err
    done = len(json.loads((out / "metrics.json").read_text())["rounds"])
    assert 1 <= done < 8

    deployment.restart("site-2")  # back on its kept state: dataset, accounts, approval
    assert main(["run", "--resume", str(out), "--connection", str(deployment.connection_file)]) == 0
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, 9))
    (resumed, features), (reference, _) = load_model(out / "model.npz"), load_model(tmp_path / "ref" / "model.npz")
    assert features.name == "scattering"  # the default map, kept by the resumed run
    assert np.array_equal(resumed["coef"], reference["coef"])
    assert np.array_equal(resumed["intercept"], reference["intercept"])


def test_site_down_before_the_run_is_one_line(deployment, small_idx, tmp_path, capsys):
    deployment.procs["site-2"].kill()
    deployment.procs["site-2"].wait()
    try:
        assert main(run_args(deployment, small_idx, tmp_path / "x", "--rounds", "1")) == 1
    finally:
        deployment.restart("site-2")
    assert "cannot reach site-2 at http://127.0.0.1:" in error_line(capsys.readouterr().err)


def test_min_sites_continues_without_a_dead_site_and_records_it(deployment, small_idx, tmp_path):
    out = tmp_path / "dropout"
    run = subprocess.Popen([sys.executable, "-m", "fl_syft",
                            *run_args(deployment, small_idx, out, "--rounds", "6", "--min-sites", "1")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    deployment.procs["site-2"].kill()
    _, err = run.communicate(timeout=180)
    deployment.restart("site-2")
    assert run.returncode == 0, err[-2000:]
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert len(rounds) == 6
    assert "site-2" in rounds[-1]["dropped"] and set(rounds[-1]["sites"]) == {"site-1"}
    assert "continuing without site-2" in err


def test_keep_restart_keeps_dataset_accounts_and_audit_log(deployment, small_idx, tmp_path):
    assert main(run_args(deployment, small_idx, tmp_path / "before", "--rounds", "1")) == 0
    before = audit(deployment.connection_file)
    assert before
    rows = deployment.restart("site-1")["rows"]
    assert rows == 1500  # no re-upload needed: the shard file is gone, the dataset is not
    assert not (deployment.state / "site-1" / "shard.npy").exists()
    assert audit(deployment.connection_file)[: len(before)] == before
    assert login(deployment.connection_file).datasets[0].assets[0].mock.shape == (100, 785)
    assert main(run_args(deployment, small_idx, tmp_path / "after", "--rounds", "1")) == 0


def test_resume_of_a_finished_run_does_nothing(deployment, small_idx, tmp_path, capsys):
    out = tmp_path / "done"
    assert main(run_args(deployment, small_idx, out, "--rounds", "1")) == 0
    mtime = os.path.getmtime(out / "model.npz")
    assert main(["run", "--resume", str(out), "--connection", str(deployment.connection_file)]) == 0
    assert "nothing to do: 1 round already completed (1 round asked for)" in capsys.readouterr().err
    assert os.path.getmtime(out / "model.npz") == mtime


def test_two_first_time_runs_at_once_share_one_request(small_idx, tmp_path):
    """Both submit ml_experiment at the same moment; the second finds the first's request."""
    fresh = running_deployment(f"idx:{small_idx}", tmp_path / "state")
    deployment = next(fresh)
    try:
        runs = [subprocess.Popen([sys.executable, "-m", "fl_syft",
                                  *run_args(deployment, small_idx, tmp_path / f"out{i}", "--rounds", "1")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        results = [run.communicate(timeout=180) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], [err[-1500:] for _, err in results]
        assert all("Traceback" not in err for _, err in results)
        assert [e["decision"] for e in audit(deployment.connection_file)][:1] == ["approved"]
    finally:
        fresh.close()
