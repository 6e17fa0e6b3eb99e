"""Real PySyft datasites on loopback ports: launcher, approval, orchestrator, notebook."""

from __future__ import annotations

import inspect
import json
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import error_line, plain_policy, width
from syft_helpers import audit, function_from_source, login, run_notebook, running_deployment, submit, wait_decision

from fl_syft.cli import main
from fl_syft.common.data import load_mnist
from fl_syft.common.features import DEFAULT as DEFAULT_FEATURES
from fl_syft.common.partition import PartitionSpec, make_shards
from fl_syft.owner.network import check_port_free, free_base_port
from fl_syft.scientist.addresses import ds_password, read_connection
from fl_syft.scientist.algorithms.fedavg import FedAvg, FedAvgSettings
from fl_syft.scientist.connect import connect
from fl_syft.scientist.evaluate import features_of_test_set as features_of
from fl_syft.simulate import local_sites
from fl_syft.vetted.local_training import ml_experiment

pytestmark = pytest.mark.syft
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deployment(small_idx, tmp_path_factory):
    yield from running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def small(small_idx):
    return load_mnist(f"idx:{small_idx}")


def test_launcher_reports_sites_and_writes_private_files(deployment):
    assert [r["name"] for r in deployment.table] == ["site-1", "site-2"]
    assert sum(r["rows"] for r in deployment.table) == 3000
    doc = json.loads(deployment.connection_file.read_text())
    assert [s["port"] for s in doc["datasites"]] == [deployment.opts.base_port, deployment.opts.base_port + 1]
    assert all(s["url"] == "http://127.0.0.1" for s in doc["datasites"])
    for secret in (deployment.state / "secrets.json", deployment.state / "site-1" / "identity.json"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not (deployment.state / "site-1" / "shard.npy").exists()  # the datasite holds it now


def leak(data):
    return data


def test_foreign_function_is_denied_and_returns_nothing(deployment):
    client = login(deployment.connection_file)
    submit(client, leak)
    request = wait_decision(client, "leak")
    assert "REJECTED" in str(request.status)
    assert "not on this site's allow-list" in request.deny_reason
    with pytest.raises(Exception, match="DENIED"):
        client.code.leak(data=client.datasets[0].assets[0])


def test_copy_with_one_extra_line_is_denied(deployment, tmp_path):
    source = textwrap.dedent(inspect.getsource(ml_experiment)).replace(
        "    import time\n", "    import time\n    config = dict(config)\n")
    assert source != textwrap.dedent(inspect.getsource(ml_experiment))
    client = login(deployment.connection_file)
    submit(client, function_from_source(source, "ml_experiment", tmp_path), global_params=dict, config=dict)
    request = wait_decision(client, "ml_experiment")
    assert "REJECTED" in str(request.status)
    assert "differs from the vetted fl_syft version" in request.deny_reason


def test_vetted_function_is_approved_and_a_round_runs(deployment, small):
    # Runs after a denied ml_experiment of the same name exists: the right one must be used.
    conn = deployment.connection_file
    sites = connect(read_connection(conn), ds_password(conn), FedAvg.functions)
    fedavg = FedAvg(FedAvgSettings(local_iters=5))  # on the default features, scattering
    params, history = fedavg.run(sites, features_of(fedavg.features, small.X_test), small.y_test, rounds=1)
    assert params["coef"].shape == (10, width(DEFAULT_FEATURES))
    assert history[0]["global_test_accuracy"] > 0.6
    assert sum(m["n_samples"] for m in history[0]["sites"].values()) == int(3000 * 0.95)


def test_federated_lbfgs_runs_through_pysyft(deployment, small_idx, tmp_path):
    out = tmp_path / "lbfgs"
    assert main(["run", "--connection", str(deployment.connection_file), "--data", f"idx:{small_idx}",
                 "--algorithm", "lbfgs", "--rounds", "6", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["algorithm"] == "lbfgs" and len(metrics["rounds"]) >= 6
    assert metrics["rounds"][-1]["objective"] < metrics["rounds"][0]["objective"]
    assert ("lr_loss_grad", "approved") in [(e["function"], e["decision"]) for e in audit(deployment.connection_file)]


def test_run_baselines_come_from_the_sites_and_never_pool(deployment, small_idx, tmp_path):
    out = tmp_path / "baselines"
    assert main(["run", "--connection", str(deployment.connection_file), "--data", f"idx:{small_idx}",
                 "--rounds", "1", "--local-iters", "3", "--baselines", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    local = metrics["baselines"]["local_only"]
    assert set(local) == {"site-1", "site-2"} and "centralized" not in metrics["baselines"]
    assert all(0.6 < v["test_accuracy"] <= 1 for v in local.values())
    report = (out / "report.md").read_text()
    assert "held-out rows not included" in report and "centralized" not in report
    for site, v in local.items():  # the histogram is what each site reported, its training rows
        assert f"| {site} | " + " | ".join(str(c) for c in v["class_counts"]) in report
        assert sum(v["class_counts"]) == metrics["rounds"][0]["sites"][site]["n_samples"]
    assert (out / "comparison.png").stat().st_size > 0


def test_audit_log_records_every_decision(deployment):
    entries = audit(deployment.connection_file)
    decisions = [(e["function"], e["decision"]) for e in entries]
    assert ("leak", "denied") in decisions
    assert ("ml_experiment", "denied") in decisions
    assert ("ml_experiment", "approved") in decisions
    for e in entries:
        assert e["requester"] == "scientist@fl-syft.example.com" and len(e["fingerprint"]) == 64 and e["time"]


@pytest.mark.parametrize("features", ["pixels", "scattering"])
def test_pysyft_run_equals_simulation(deployment, small, small_idx, features):
    """The same rounds through the datasites (their features computed there) and in-process."""
    fedavg = FedAvg(FedAvgSettings(local_iters=5), features=features)
    X_test = features_of(fedavg.features, small.X_test)
    conn = deployment.connection_file
    sites = connect(read_connection(conn), ds_password(conn), FedAvg.functions)
    remote, _ = fedavg.run(sites, X_test, small.y_test, rounds=2)
    shards = make_shards(small.X_train, small.y_train, PartitionSpec(sites=2))
    local, _ = fedavg.run(local_sites(shards, plain_policy()), X_test, small.y_test, rounds=2)
    assert remote["coef"].shape == local["coef"].shape == (10, width(features))
    assert np.abs(remote["coef"] - local["coef"]).max() <= 1e-6
    assert np.abs(remote["intercept"] - local["intercept"]).max() <= 1e-6


PLAIN_CLIENT = r'''
import contextlib, io, json, sys, time
from pathlib import Path
import syft as sy

{ml_experiment_source}

def leak(data):
    return data

conn, email, password = sys.argv[1:4]
site = json.loads(Path(conn).read_text())["datasites"][0]
with contextlib.redirect_stdout(io.StringIO()):
    c = sy.login(url=site["url"], port=site["port"], email=email, password=password)
    asset = c.datasets[0].assets[0]
    for fn, kwargs in ((ml_experiment, {{"global_params": dict, "config": dict}}), (leak, {{}})):
        policy = sy.MixedInputPolicy(client=c, data=asset, **kwargs)
        c.code.request_code_execution(sy.syft_function(input_policy=policy)(fn))
time.sleep(2)
status = {{r.code.service_func_name: str(r.status) for r in c.requests.get_all()}}
with contextlib.redirect_stdout(io.StringIO()):
    result = c.code.ml_experiment(data=asset, global_params={{}}, config={{"local_iters": 3}}).get()
    try:
        c.code.leak(data=asset).get()
        leaked = True
    except Exception:
        leaked = False
print(json.dumps({{"status": status, "coef_shape": list(result["coef"].shape), "n": result["n_samples"],
                  "leaked": leaked, "fl_syft_imported": any(m.startswith("fl_syft") for m in sys.modules)}}))
'''


def test_plain_pysyft_client_gets_results_and_denials(deployment, tmp_path):
    admin = login(deployment.connection_file, email="owner@fl-syft.example.com",
                  password=json.loads((deployment.state / "secrets.json").read_text())["admin_password"])
    admin.users.create(name="Plain", email="plain@example.com", password="plain-pw-1", password_verify="plain-pw-1")
    script = tmp_path / "plain.py"  # what a user without fl_syft writes: the function pasted in
    script.write_text(PLAIN_CLIENT.format(ml_experiment_source=textwrap.dedent(inspect.getsource(ml_experiment))))
    done = subprocess.run([sys.executable, str(script), str(deployment.connection_file),
                           "plain@example.com", "plain-pw-1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["fl_syft_imported"] is False
    assert "APPROVED" in report["status"]["ml_experiment"] and "REJECTED" in report["status"]["leak"]
    assert report["leaked"] is False
    assert report["coef_shape"] == [10, width(DEFAULT_FEATURES)] and report["n"] > 0  # the default map


def test_scientist_sees_only_the_mock(deployment):
    asset = login(deployment.connection_file).datasets[0].assets[0]
    assert asset.data is None
    mock = np.asarray(asset.mock)
    assert mock.shape == (100, 785) and mock.dtype == np.uint8
    assert set(mock[:, 784]) == set(range(10))


@pytest.mark.parametrize("email, password", [("info@openmined.org", "changethis"),
                                             ("owner@fl-syft.example.com", "changethis")])
def test_default_credentials_do_not_log_in(deployment, email, password):
    from syft.types.errors import SyftException

    with pytest.raises(SyftException):
        login(deployment.connection_file, email=email, password=password)


def test_sites_listen_on_loopback_only(deployment):
    for proc in deployment.procs.values():
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections("inet") if c.status == "LISTEN"]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


def test_launcher_refuses_a_busy_port(deployment, small_idx, capsys):
    rc = main(["launch", "--data", f"idx:{small_idx}", "--base-port", str(deployment.opts.base_port),
               "--state-dir", str(deployment.state.parent / "other")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and f"port {deployment.opts.base_port} on 127.0.0.1 is already in use" in err
    assert len(err.splitlines()) == 1


def test_notebook_executes_top_to_bottom(deployment, small_idx):
    nb = run_notebook({"FL_SYFT_CONNECTION": str(deployment.connection_file), "FL_SYFT_ROUNDS": "2",
                       "FL_SYFT_LOCAL_ITERS": "3", "FL_SYFT_DATA": f"idx:{small_idx}"})
    results = [o["data"]["text/plain"] for c in nb.cells for o in c.get("outputs", [])
               if o.get("output_type") == "execute_result"]
    assert any("final global test accuracy" in r for r in results)
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_crash_of_one_site_leaves_the_others_serving(deployment):
    """Last in this module: it kills site-2."""
    deployment.procs["site-2"].kill()
    deployment.procs["site-2"].wait()
    client = login(deployment.connection_file, index=0)
    assert client.datasets[0].assets[0].mock.shape == (100, 785)


@pytest.mark.parametrize("how", ["variable", "variable with --datasite", "secrets.json"])
def test_wrong_password_is_one_line_naming_where_it_came_from(deployment, small_idx, tmp_path, capsys,
                                                               monkeypatch, how):
    port = deployment.opts.base_port
    if how == "secrets.json":  # the launcher's files, but a password from an earlier start
        monkeypatch.delenv("FL_SYFT_DS_PASSWORD", raising=False)
        (tmp_path / "datasites.json").write_text(deployment.connection_file.read_text())
        (tmp_path / "secrets.json").write_text(json.dumps({"ds_password": "from-an-earlier-start"}))
        where = ["--connection", str(tmp_path / "datasites.json")]
    else:
        monkeypatch.setenv("FL_SYFT_DS_PASSWORD", "not-the-password")
        where = (["--datasite", f"http://127.0.0.1:{port}"] if "datasite" in how
                 else ["--connection", str(deployment.connection_file)])
    rc = main(["run", *where, "--data", f"idx:{small_idx}"])
    line = error_line(capsys.readouterr().err)
    assert rc == 1 and f"at http://127.0.0.1:{port} failed for scientist@fl-syft.example.com: wrong email" in line
    if how == "secrets.json":
        assert f"the ds_password in {tmp_path / 'secrets.json'} does not match" in line
    else:
        assert "FL_SYFT_DS_PASSWORD does not match this datasite's password for you" in line
        assert "secrets.json" not in line


def test_one_datasite_by_two_urls_is_refused(deployment, small_idx, capsys, monkeypatch):
    secrets = json.loads((deployment.state / "secrets.json").read_text())
    monkeypatch.setenv("FL_SYFT_DS_PASSWORD", secrets["ds_password"])
    port = deployment.opts.base_port
    rc = main(["run", "--datasite", f"http://127.0.0.1:{port}", "--datasite", f"http://localhost:{port}",
               "--data", f"idx:{small_idx}"])
    line = error_line(capsys.readouterr().err)
    assert rc == 1 and f"http://127.0.0.1:{port} and http://localhost:{port} are the same datasite (site-1)" in line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_launcher_process_stops_every_site_and_frees_ports(small_idx, tmp_path, sig):
    base = free_base_port(2)
    launcher = subprocess.Popen([sys.executable, str(ROOT / "launch_datasites.py"), "--data", f"idx:{small_idx}",
                                 "--base-port", str(base), "--state-dir", str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    connection = tmp_path / "datasites.json"
    deadline = time.monotonic() + 120
    while not connection.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert connection.exists(), launcher.communicate()[1][-2000:]
    sites = [p for p in psutil.Process(launcher.pid).children() if "fl_syft.owner.datasite" in " ".join(p.cmdline())]
    assert len(sites) == 2
    launcher.send_signal(sig)
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, err[-2000:]
    assert "site-1" in out and "1500" in out  # the table: name, URL, rows
    assert not connection.exists()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in sites)
    for port in (base, base + 1):
        check_port_free("127.0.0.1", port)
