"""Bad input: one clear line naming the problem and the fix, non-zero exit, nothing lost.

(Further cases live beside the features: bad simulate values and corrupted data files in
test_cli_simulate.py and test_data.py, a busy port and wrong credentials in
test_syft_deployment.py, a site down before a run in test_resilience.py.)
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from conftest import PLAIN, error_line

from fl_syft.cli import main
from fl_syft.owner import guard
from fl_syft.owner.network import free_base_port
from fl_syft.vetted.local_training import ml_experiment

ROUNDS = ["--rounds", "1", "--local-iters", "2"]


def run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, error_line(capsys.readouterr().err)


def test_connection_file_missing(tmp_path, capsys):
    rc, line = run(capsys, "run", "--connection", str(tmp_path / "nope.json"))
    assert rc == 1 and "nope.json not found: start the datasites first (python launch_datasites.py)" in line


@pytest.mark.parametrize("content", ["{not json", '{"datasites": [{"name": "site-1"}]}', '{"sites": []}'])
def test_connection_file_malformed(tmp_path, capsys, content):
    (tmp_path / "datasites.json").write_text(content)
    rc, line = run(capsys, "run", "--connection", str(tmp_path / "datasites.json"))
    assert rc == 1 and "is malformed" in line and "restart the launcher" in line


def test_connection_file_lists_no_datasites(tmp_path, capsys):
    (tmp_path / "datasites.json").write_text('{"datasites": []}')
    rc, line = run(capsys, "run", "--connection", str(tmp_path / "datasites.json"))
    assert rc == 1 and "lists no datasites" in line


def test_datasites_not_started(tmp_path, capsys, monkeypatch):
    port = free_base_port(1)
    (tmp_path / "datasites.json").write_text(json.dumps({"datasites": [
        {"name": "site-1", "url": "http://127.0.0.1", "port": port, "ds_email": "scientist@fl-syft.example.com"}]}))
    monkeypatch.setenv("FL_SYFT_DS_PASSWORD", "x")
    rc, line = run(capsys, "run", "--connection", str(tmp_path / "datasites.json"))
    assert rc == 1 and f"cannot reach site-1 at http://127.0.0.1:{port}: is the datasite running" in line


def test_wrong_url_or_port(capsys, monkeypatch):
    monkeypatch.setenv("FL_SYFT_DS_PASSWORD", "x")
    port = free_base_port(1)
    rc, line = run(capsys, "run", "--datasite", f"http://127.0.0.1:{port}")
    assert rc == 1 and f"cannot reach the datasite at http://127.0.0.1:{port}: is the datasite running" in line


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "http://127.0.0.1", "ftp://host:21", "http://:80"])
def test_malformed_datasite_url(capsys, url):
    rc, line = run(capsys, "run", "--datasite", url)
    assert rc == 2 and "must look like http://HOST:PORT" in line


def test_no_password_anywhere(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FL_SYFT_DS_PASSWORD", raising=False)
    (tmp_path / "datasites.json").write_text(json.dumps({"datasites": [
        {"name": "site-1", "url": "http://127.0.0.1", "port": 1, "ds_email": "a@example.com"}]}))
    rc, line = run(capsys, "run", "--connection", str(tmp_path / "datasites.json"))
    assert rc == 1 and "no password: set FL_SYFT_DS_PASSWORD" in line


def test_port_in_use_before_anything_starts(tmp_path, capsys, small_idx):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, line = run(capsys, "launch", "--data", f"idx:{small_idx}", "--base-port", str(port),
                       "--state-dir", str(tmp_path))
    assert rc == 1 and f"port {port} on 127.0.0.1 is already in use" in line and "--base-port" in line
    assert not (tmp_path / "site-1").exists()  # nothing was started or written


def test_non_loopback_host_warns(tmp_path, capsys, small_idx):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["launch", "--data", f"idx:{small_idx}", "--host", "0.0.0.0", "--base-port", str(port),
                     "--state-dir", str(tmp_path)]) == 1
    assert "binding to 0.0.0.0: the datasites are reachable from other machines" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["launch", "--base-port", "65535", "--sites", "2"], "--base-port 65535 with 2 sites needs ports 65535..65536"),
    (["launch", "--base-port", "80"], "use 1024.."),
    (["run", "--min-sites", "0", "--datasite", "http://127.0.0.1:9"], "--min-sites must be at least 1"),
    (["run", "--min-sites", "3", "--datasite", "http://127.0.0.1:9"], "--min-sites 3 is more than the 1 sites"),
    (["run", "--retries", "-1"], "--retries must be >= 0"),
    (["run", "--rounds", "0"], "--rounds must be at least 1"),
    # what a site would refuse after login is refused before anything is connected
    (["run", "--lr", "200", "--datasite", "http://127.0.0.1:9"], "--lr 200.0 is outside [0.0001, 100] (what the "
                                                                  "sites admit)"),
    (["run", "--local-steps", "0", "--datasite", "http://127.0.0.1:9"], "--local-steps 0 is outside [1, 100]"),
    (["run", "--algorithm", "lbfgs", "--lr", "1", "--datasite", "http://127.0.0.1:9"],
     "--lr: not a setting of --algorithm lbfgs"),
    (["demo", "--partition", "dirichlet", "--alpha", "-1"], "--alpha must be > 0"),
    (["demo", "--noisy-sites", "5", "--noise-std", "50"], "--noisy-sites [5] out of range"),
    # the flag and its range, nothing a user cannot set
    (["serve", "--dp-clip", "0", "--name", "x", "--data", "rows.csv"], "error: --dp-clip must be within 1e-3..1e3 "
                                                                       "(the L2 norm each row's gradient is clipped "
                                                                       "to; default 1), got 0"),
])
def test_invalid_cli_values_exit_2(capsys, argv, message, monkeypatch):
    monkeypatch.setenv("FL_SYFT_DS_PASSWORD", "x")
    rc, line = run(capsys, *argv)
    assert rc == 2 and message in line


def test_keep_without_saved_state(tmp_path, capsys):
    rc, line = run(capsys, "launch", "--keep", "--state-dir", str(tmp_path), "--base-port", str(free_base_port(2)))
    assert rc == 1 and "--keep: no saved state for site-1" in line and "start once without --keep" in line


def test_resume_without_checkpoint(tmp_path, capsys):
    rc, line = run(capsys, "run", "--resume", str(tmp_path))
    assert rc == 1 and "no checkpoint.npz there" in line


@pytest.mark.parametrize("poison, message", [
    (lambda r: r["coef"].__setitem__((0, 0), np.nan), "coef contains NaN"),
    (lambda r: r.update(intercept=np.zeros(9)), r"intercept has shape (9,), expected (10,)"),
])
def test_site_returning_nan_or_wrong_shapes(small_idx, tmp_path, capsys, monkeypatch, poison, message):
    real = ml_experiment

    def site_2_is_broken(data, global_params, config):
        result = real(data, global_params, config)
        if len(data["y"]) == 1500 and data["y"][0] == site_2_first_label:  # data: the rows' features and labels
            poison(result)
        return result

    from fl_syft.common.data import load_mnist
    from fl_syft.common.partition import PartitionSpec, make_shards

    small = load_mnist(f"idx:{small_idx}")
    site_2_first_label = make_shards(small.X_train, small.y_train, PartitionSpec(sites=2))[1][0, 784]
    monkeypatch.setitem(guard.VETTED, "ml_experiment", site_2_is_broken)
    out = tmp_path / "out"
    rc, line = run(capsys, "simulate", "--data", f"idx:{small_idx}", "--out", str(out), *ROUNDS, *PLAIN)
    assert rc == 1 and "site 'site-2' returned an invalid result" in line and message in line
    assert not (out / "model.npz").exists()  # a poisoned round is never saved


def test_notebook_before_the_launcher(tmp_path):
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    root = Path(__file__).resolve().parents[1]
    nb = nbformat.read(root / "notebooks" / "federated_mnist.ipynb", as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell(
        f"import os; os.environ['FL_SYFT_CONNECTION'] = {str(tmp_path / 'datasites.json')!r}"))
    with pytest.raises(CellExecutionError) as err:
        NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(root / "notebooks")}}).execute()
    assert "not found: start the datasites first (python launch_datasites.py)" in str(err.value)


def test_frequencies_are_refused_off_pixels_before_any_call(small_idx, tmp_path, capsys):
    """Under DP --frequencies describes an image's pixels: on the default scattering features it is
    refused before any site is called (nothing charged), on --features pixels it runs."""
    dp = ["simulate", "--data", f"idx:{small_idx}", "--min-rows", "50", "--rounds", "1", "--local-steps", "1",
          "--frequencies", "10"]
    rc, line = run(capsys, *dp, "--out", str(tmp_path / "a"))
    assert rc == 2 and "--frequencies applies to --features pixels only, not scattering: drop it" in line
    assert not (tmp_path / "a" / "metrics.json").exists()
    assert main([*dp, "--features", "pixels", "--out", str(tmp_path / "b")]) == 0
    config = json.loads((tmp_path / "b" / "metrics.json").read_text())["config"]
    assert config["features"]["name"] == "pixels" and config["privacy"]["settings"]["frequencies"] == 10
