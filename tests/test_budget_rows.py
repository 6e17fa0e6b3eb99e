"""The privacy budget belongs to the rows, for good: a fresh start over rows a site held before
keeps what they spent (and their published row count); only the owner's --reset-privacy-budget
starts it again, warned, audited, the old ledger kept. The launcher's own sites are each
other's secure-aggregation peers, so --require-secure-aggregation works with it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PLAIN, error_line, synthetic_shard

from fl_syft.cli import build_parser, main
from fl_syft.cli_owner import launch_options
from fl_syft.common.accounting import epsilon
from fl_syft.common.errors import ConfigError
from fl_syft.common.partition import PartitionSpec
from fl_syft.owner.datasite import shard_sha256
from fl_syft.owner.launch import LaunchOptions
from fl_syft.owner.ledger import DeltaChanged, Ledger, LedgerStore, open_site_ledger, summary
from fl_syft.owner.network import free_base_port
from fl_syft.owner.policy import owner_policy
from fl_syft.owner.serve import ServeOptions

ROOT = Path(__file__).resolve().parents[1]
SHA = "ab" * 32
DP = ["--dp-epsilon", "4", "--min-rows", "10"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the ledger store (fast) --------------------------------------------------------------------

def test_the_store_keeps_one_owner_only_ledger_per_rows_and_the_current_total(tmp_path):
    store = LedgerStore(tmp_path)
    ledger = store.open(SHA, total=1.0, delta=1e-5)
    after = ledger.charge(10.0, 5, "call")
    assert ledger.path == tmp_path / "ledgers" / f"{SHA}.jsonl"
    assert mode(tmp_path / "ledgers") == 0o700 and mode(ledger.path) == 0o600
    again = store.open(SHA, total=2.0, delta=1e-5)  # a new policy total: the spends stay
    assert again.spent == pytest.approx(after, rel=1e-12) and again.total == 2.0
    assert store.summary(SHA).epsilon_total == 2.0 and store.summary(SHA).epsilon_spent == pytest.approx(after)
    assert store.open(SHA, total=2.0, delta=1e-5).spent == pytest.approx(after)  # no second policy line
    assert [json.loads(line)["kind"] for line in ledger.path.read_text().splitlines()] == ["header", "call", "policy"]


def test_another_delta_over_the_same_rows_is_refused_naming_the_fix(tmp_path):
    store = LedgerStore(tmp_path)
    store.open(SHA, total=1.0, delta=1e-5).charge(10.0, 1, "call")
    with pytest.raises(DeltaChanged) as e:
        store.open(SHA, total=1.0, delta=1e-6)
    assert e.value.for_cli() == (f"--dp-delta 1e-06: the privacy ledger of rows {SHA[:12]} composes their spends at "
                                 "delta 1e-05: start with --dp-delta 1e-05 to keep their budget, or with "
                                 "--reset-privacy-budget to start it again")
    assert store.summary(SHA).epsilon_spent > 0  # nothing lost


def test_retire_renames_the_ledger_and_the_rows_start_again(tmp_path):
    store = LedgerStore(tmp_path)
    store.open(SHA, total=1.0, delta=1e-5).charge(10.0, 5, "call")
    spent = store.summary(SHA).epsilon_spent
    retired = store.retire(SHA)
    assert retired.parent == store.root and retired.name.startswith(f"{SHA}.reset-")
    assert summary(retired).epsilon_spent == spent  # the history stays readable
    assert store.summary(SHA) is None and store.open(SHA, total=1.0, delta=1e-5).spent == 0
    assert store.retire("cd" * 32) is None
    second = store.retire(SHA)
    assert second != retired and retired.exists() and second.exists()


def test_a_site_ledger_from_before_the_store_is_adopted_and_linked(tmp_path):
    site = tmp_path / "site-1"
    site.mkdir()
    legacy = Ledger(site / "privacy-ledger.jsonl", SHA, total=1.0, delta=1e-5)
    spent = legacy.charge(10.0, 5, "call")
    ledger = open_site_ledger(site, SHA, total=1.0, delta=1e-5)
    assert ledger.spent == pytest.approx(spent) and ledger.path == tmp_path / "ledgers" / f"{SHA}.jsonl"
    link = site / "privacy-ledger.jsonl"
    assert link.is_symlink() and link.resolve() == ledger.path.resolve()
    assert LedgerStore(tmp_path).adopt(link) is None  # a link is not a ledger to adopt
    open_site_ledger(site, SHA, total=1.0, delta=1e-5)  # again: same ledger, same link
    assert summary(link).epsilon_spent == pytest.approx(spent)
    with pytest.raises(Exception, match="not a SHA-256"):
        LedgerStore(tmp_path).path("../escape")


def test_a_delta_change_refuses_the_start_before_anything_is_written(small_idx, tmp_path, capsys):
    state = tmp_path / "state"
    opts = LaunchOptions(partition=PartitionSpec(sites=1), data=f"idx:{small_idx}", state_dir=state)
    sha = shard_sha256(opts.load_shards()[0])
    LedgerStore(state).open(sha, total=4.0, delta=1e-6).charge(10.0, 1, "call")
    before = sorted(p.relative_to(state) for p in state.rglob("*"))
    rc = main(["launch", "--data", f"idx:{small_idx}", "--sites", "1", "--state-dir", str(state),
               "--base-port", str(free_base_port(1)), *DP])
    line = error_line(capsys.readouterr().err)
    assert rc == 2 and f"--dp-delta 1e-05: the privacy ledger of rows {sha[:12]}" in line
    assert "--reset-privacy-budget" in line
    assert sorted(p.relative_to(state) for p in state.rglob("*") if p.name != ".lock") == before


def test_two_sites_of_one_deployment_cannot_share_rows(tmp_path):
    from fl_syft.owner.launch import Deployment, LaunchError

    class Same(LaunchOptions):
        def load_shards(self):
            return [synthetic_shard(100)] * 2

    with pytest.raises(LaunchError, match="site-1 and site-2 would hold the same rows"):
        with Deployment(Same(base_port=free_base_port(2), state_dir=tmp_path / "state")) as d:
            d.start()
    assert not (tmp_path / "state" / "site-1").exists()


@pytest.mark.parametrize("command", ["launch", "demo", "serve"])
def test_every_owner_command_takes_the_reset_flag(command, tmp_path):
    extra = ["--name", "a", "--data", "x.npz"] if command == "serve" else []
    args = build_parser().parse_args([command, *extra, "--reset-privacy-budget"])
    assert args.reset_privacy_budget is True
    if command != "serve":
        assert launch_options(args, command).reset_privacy_budget is True


def test_secure_aggregation_can_be_required_before_the_peers_are_known():
    policy = owner_policy(require_secure_aggregation=True)  # the launcher fills in its own sites
    assert policy.privacy.require_secure_aggregation and not policy.privacy.peers
    with pytest.raises(ConfigError, match="needs the federation's peers"):
        ServeOptions(data="x.npz", name="a", policy=policy).check()  # serve: only with --peers
    ServeOptions(data="x.npz", name="a", policy=owner_policy(require_secure_aggregation=True,
                                                             peers={"b": "00" * 32})).check()


# --- real datasites ---------------------------------------------------------------------------------

def start(argv: list[str], state: Path, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, *argv, "--state-dir", str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 180
    while not (state / "datasites.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate()[1][-3000:])
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, wait; the launcher's stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-3000:]
    return err


def published(state: Path, invite: Path | None = None) -> dict:
    """The first site's privacy status as the scientist reads it (the ``fl_syft.privacy`` endpoint),
    through the launcher's connection file or a served site's invite."""
    from fl_syft.scientist.addresses import ds_password, invite_addresses, read_connection
    from fl_syft.scientist.connect import connect

    connection = state / "datasites.json"
    addresses = invite_addresses([invite]) if invite else read_connection(connection)
    site = connect(addresses[:1], None if invite else ds_password(connection), ())[0]
    return site.privacy()


def launcher(small_idx: Path, port: int, *extra: str) -> list[str]:
    return [str(ROOT / "launch_datasites.py"), "--data", f"idx:{small_idx}", "--sites", "1",
            "--base-port", str(port), *extra]


@pytest.mark.syft
def test_a_fresh_start_keeps_the_rows_budget_and_only_the_owner_resets_it(small_idx, tmp_path):
    state, port = tmp_path / "state", free_base_port(1)
    proc = start(launcher(small_idx, port, *DP), state)
    try:
        assert main(["run", "--connection", str(state / "datasites.json"), "--data", f"idx:{small_idx}",
                     "--out", str(tmp_path / "run"), "--epsilon", "0.5", "--rounds", "1", "--local-steps", "2"]) == 0
        spent = published(state)
    finally:
        stop(proc)
    delta = spent["policy"]["delta"]
    count_only = epsilon([spent["policy"]["count_noise"]], delta)  # what publishing the row count costs
    assert spent["epsilon_spent"] > count_only + 0.1

    proc = start(launcher(small_idx, port, *DP), state)  # afresh, not --keep: the site's state is wiped
    try:
        again = published(state)
    finally:
        err = stop(proc)
    assert again["epsilon_spent"] == pytest.approx(spent["epsilon_spent"], rel=1e-12)
    assert again["rows"] == spent["rows"] and again["noise_multipliers"] == spent["noise_multipliers"]
    assert "resets their privacy budget" not in err

    proc = start(launcher(small_idx, port, *DP, "--reset-privacy-budget"), state)
    try:
        reset = published(state)
    finally:
        err = stop(proc)
    assert reset["epsilon_spent"] == pytest.approx(count_only, rel=1e-9)  # only the new row count
    sha = json.loads((state / "site-1" / "data.json").read_text())["sha256"]
    warning = [line for line in err.splitlines() if "--reset-privacy-budget" in line]
    assert len(warning) == 1 and f"site-1: --reset-privacy-budget: the privacy budget of rows {sha[:12]} was reset " \
        f"by the owner: epsilon {spent['epsilon_spent']:.3g} of 4" in warning[0]
    entries = [json.loads(line) for line in (state / "site-1" / "audit.jsonl").read_text().splitlines()]
    entry = next(e for e in entries if e.get("event") == "privacy budget reset")
    assert entry["by"] == "owner" and entry["data_sha256"] == sha
    assert entry["epsilon_spent"] == pytest.approx(spent["epsilon_spent"], rel=1e-12)
    assert summary(Path(entry["old_ledger"])).epsilon_spent == pytest.approx(spent["epsilon_spent"], rel=1e-12)
    assert mode(state / "ledgers") == 0o700 and {mode(p) for p in (state / "ledgers").iterdir()} == {0o600}


@pytest.mark.syft
def test_serve_afresh_over_the_same_file_keeps_the_budget(small_idx, tmp_path):
    from fl_syft.common.data import load_mnist

    small = load_mnist(f"idx:{small_idx}")
    npz, state, port = tmp_path / "rows.npz", tmp_path / "state", free_base_port(1)
    np.savez(npz, X=small.X_train[:1200], y=small.y_train[:1200])
    invite = state / "owner-a" / "invite.json"  # (a fresh start writes a new one: a new certificate)
    serve = ["-m", "fl_syft", "serve", "--data", str(npz), "--name", "owner-a", "--port", str(port), *DP]
    proc = start(serve, state, dict(os.environ))
    try:
        assert main(["run", "--invite", str(invite), "--data", f"idx:{small_idx}", "--out", str(tmp_path / "run"),
                     "--epsilon", "0.5", "--rounds", "1", "--local-steps", "2"]) == 0
        spent = published(state, invite)
    finally:
        stop(proc)
    proc = start(serve, state, dict(os.environ))  # afresh over the same file
    try:
        again = published(state, invite)
    finally:
        stop(proc)
    assert spent["epsilon_spent"] > 0.3
    assert again["epsilon_spent"] == pytest.approx(spent["epsilon_spent"], rel=1e-12) and again["rows"] == spent["rows"]


@pytest.mark.syft
def test_the_launcher_can_require_secure_aggregation(small_idx, tmp_path):
    from fl_syft.scientist.addresses import ds_password, read_connection
    from fl_syft.scientist.algorithms.fedavg import FedAvg, FedAvgSettings
    from fl_syft.scientist.connect import connect
    from fl_syft.scientist.rounds import SiteRefused

    state = tmp_path / "state"
    proc = start([str(ROOT / "launch_datasites.py"), "--data", f"idx:{small_idx}", "--base-port",
                  str(free_base_port(2)), *PLAIN, "--require-secure-aggregation"], state)
    try:
        connection = state / "datasites.json"
        sites = connect(read_connection(connection), ds_password(connection), FedAvg.functions)
        assert sites[0].privacy()["policy"]["require_secure_aggregation"] is True
        assert set(sites[0].privacy()["policy"]["peers"]) == {"site-1", "site-2"}  # the launcher's own sites
        config = FedAvg(FedAvgSettings(local_iters=2)).configure({})[1]
        with pytest.raises(SiteRefused, match="site-1 refused ml_experiment: .*this site requires secure aggregation"):
            sites[0].call("ml_experiment", {}, config)  # a plain call: the site's guard refuses it
        assert main(["run", "--connection", str(connection), "--data", f"idx:{small_idx}", "--rounds", "1",
                     "--local-iters", "2", "--out", str(tmp_path / "run")]) == 0  # securely aggregated
        metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert metrics["rounds"][0]["secure_aggregation"]["survivors"] == ["site-1", "site-2"]
    finally:
        stop(proc)
