"""``fl-syft serve``: one data owner per machine, each with their own file, reached by URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import PLAIN, error_line

from fl_syft.cli import main
from fl_syft.common.data import load_mnist
from fl_syft.owner.launch import free_base_port

pytestmark = pytest.mark.syft


def start_serve(data, name: str, port: int, state, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fl_syft", "serve", "--data", str(data), "--name", name,
                             "--port", str(port), "--state-dir", str(state), *PLAIN, "--min-rows", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_ready(proc: subprocess.Popen, state, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (state / "datasites.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)


def test_two_owners_serve_their_own_files_and_a_scientist_trains_over_both(small_idx, tmp_path, monkeypatch):
    small = load_mnist(f"idx:{small_idx}")
    npz, csv = tmp_path / "hospital.npz", tmp_path / "clinic.csv"
    np.savez(npz, X=small.X_train[:1200], y=small.y_train[:1200])
    header = "label," + ",".join(f"px{i}" for i in range(784))
    rows = np.column_stack([small.y_train[1200:2000], small.X_train[1200:2000]])
    np.savetxt(csv, rows, fmt="%d", delimiter=",", header=header, comments="")
    password = "shared-scientist-pw-1"
    env = {**os.environ, "FL_SYFT_DS_PASSWORD": password}
    ports = [free_base_port(1), free_base_port(1)]
    owners = [start_serve(npz, "hospital-a", ports[0], tmp_path / "a", env),
              start_serve(csv, "clinic-b", ports[1], tmp_path / "b", env)]
    try:
        for proc, state in zip(owners, (tmp_path / "a", tmp_path / "b"), strict=True):
            wait_ready(proc, state)
        monkeypatch.setenv("FL_SYFT_DS_PASSWORD", password)
        out = tmp_path / "run"
        assert main(["run", *[a for p in ports for a in ("--datasite", f"http://127.0.0.1:{p}")],
                     "--data", f"idx:{small_idx}", "--rounds", "2", "--local-iters", "3", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        sites = metrics["rounds"][-1]["sites"]
        assert set(sites) == {"hospital-a", "clinic-b"}
        assert sites["hospital-a"]["n_samples"] == 1200 - 60 and sites["clinic-b"]["n_samples"] == 800 - 40
        assert metrics["final"]["global_test_accuracy"] > 0.7
    finally:
        for proc in owners:
            proc.send_signal(signal.SIGTERM)
    for proc in owners:
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
    assert "fl-syft run --datasite http://127.0.0.1:" in stdout and "secrets.json" in stdout


@pytest.mark.parametrize("content, message", [
    ("1,2,3\n", "needs a label column and 784 pixel columns, has 3 columns"),
    ("label," + ",".join(["0"] * 784) + "\n", "holds no rows"),
])
def test_serve_refuses_a_bad_file_in_one_line(tmp_path, capsys, content, message):
    bad = tmp_path / "rows.csv"
    bad.write_text(content)
    rc = main(["serve", "--data", str(bad), "--name", "x", "--port", str(free_base_port(1)),
               "--state-dir", str(tmp_path / "state")])
    assert rc == 1 and message in error_line(capsys.readouterr().err)


def test_owners_who_list_each_other_as_peers_aggregate_securely(small_idx, tmp_path, monkeypatch):
    """Each owner starts once (the site makes its identity and prints its verify key), the owners
    exchange keys (--peers), restart with --keep, and the scientist learns only the sums."""
    from fl_syft.owner.provision import site_identity

    small = load_mnist(f"idx:{small_idx}")
    files = [tmp_path / "a.npz", tmp_path / "b.npz"]
    np.savez(files[0], X=small.X_train[:1000], y=small.y_train[:1000])
    np.savez(files[1], X=small.X_train[1000:2000], y=small.y_train[1000:2000])
    env = {**os.environ, "FL_SYFT_DS_PASSWORD": "shared-scientist-pw-1"}
    names, states = ["north", "south"], [tmp_path / "n", tmp_path / "s"]
    owners = [start_serve(f, n, free_base_port(1), s, env) for f, n, s in zip(files, names, states, strict=True)]
    for proc, state in zip(owners, states, strict=True):
        wait_ready(proc, state)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert "verify key of" in out
    peers = {n: site_identity(s / n, fresh=False)["verify_key"] for n, s in zip(names, states, strict=True)}
    (tmp_path / "peers.json").write_text(json.dumps(peers))
    ports = [free_base_port(1), free_base_port(1)]
    owners = [subprocess.Popen([sys.executable, "-m", "fl_syft", "serve", "--keep", "--name", n, "--port", str(p),
                                "--state-dir", str(s), "--peers", str(tmp_path / "peers.json"), *PLAIN,
                                "--min-rows", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for n, p, s in zip(names, ports, states, strict=True)]
    try:
        for proc, state in zip(owners, states, strict=True):
            wait_ready(proc, state)
        monkeypatch.setenv("FL_SYFT_DS_PASSWORD", "shared-scientist-pw-1")
        out = tmp_path / "run"
        assert main(["run", *[a for p in ports for a in ("--datasite", f"http://127.0.0.1:{p}")],
                     "--data", f"idx:{small_idx}", "--rounds", "2", "--local-iters", "3", "--secure-aggregation",
                     "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["config"]["secure_aggregation"] == {"threshold": 2}
        assert metrics["rounds"][-1]["secure_aggregation"]["survivors"] == ["north", "south"]
    finally:
        for proc in owners:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
