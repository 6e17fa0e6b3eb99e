"""``fl-syft status``: the data owner's view of what their sites approved, ran and spent, from the
sites' own files, with the sites running or not; the one line a site logs per call it ends."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import error_line, synthetic_shard

from fl_syft.cli import main
from fl_syft.owner.ledger import LEDGERS, SITE_LINK, summary
from fl_syft.owner.policy import owner_policy
from fl_syft.owner.status_view import call_line, follow, read_state
from fl_syft.simulate import local_sites

SECRET = "owner-secret-pw-1"  # in spec.json, as a site's passwords are: never shown
SHA = "ab" * 32
DP = {"features": "pixels", "local_steps": 1, "lr": 1.0, "momentum": 0.0, "l2": 0.0, "noise_multiplier": 20.0}


# --- the guard records every call's outcome ------------------------------------------------------

def test_the_guard_records_each_calls_outcome_with_the_epsilon_it_was_charged(tmp_path):
    [site] = local_sites([synthetic_shard(300)], owner_policy(epsilon=1.0, min_rows=50), tmp_path)
    entries: list[dict] = []
    site.guard.audit = entries.append
    before = site.guard.ledger.spent
    site.guard.call("ml_experiment", site.features, {}, DP, requester="ana@example.com")
    after = site.guard.ledger.spent
    for config in ({**DP, "local_steps": 5000}, {**DP, "local_steps": 100, "noise_multiplier": 0.5}):
        with pytest.raises(Exception, match="outside|budget exhausted"):
            site.guard.call("ml_experiment", site.features, {}, config, requester="ana@example.com")
    site.guard.call("ml_experiment", site.features, {}, DP, on_private_rows=False)  # PySyft's mock run: not a call
    charged, served, bounds, budget = entries
    assert charged["event"] == "charged" and charged["call"] == served["call"]
    assert charged["epsilon_charged"] == served["epsilon_charged"] == pytest.approx(after - before, rel=1e-12)
    assert served == {**served, "event": "call", "outcome": "served", "requester": "ana@example.com",
                      "epsilon_spent": after, "epsilon_total": 1.0}
    assert bounds["outcome"] == budget["outcome"] == "refused"
    assert "local_steps=5000 is outside" in bounds["reason"] and bounds["epsilon_charged"] == 0.0
    assert budget["reason"].startswith("privacy budget exhausted") and budget["epsilon_spent"] == after


# --- reading constructed state files -------------------------------------------------------------

def write_site(state: Path, name: str, audit: list[dict], secagg: list[list] | None = None,
               ledger: list[dict] | None = None, data_sha256: str = SHA) -> Path:
    site = state / name
    site.mkdir(parents=True)
    (site / "spec.json").write_text(json.dumps({
        "name": name, "host": "127.0.0.1", "port": 40001, "admin_password": SECRET, "ds_password": SECRET,
        "policy": owner_policy(epsilon=1.0).to_dict()}))
    (site / "data.json").write_text(json.dumps({"sha256": data_sha256, "rows": 1500}))
    (site / "audit.jsonl").write_text("".join(json.dumps({"site": name, **e}) + "\n" for e in audit)
                                      + '{"event": "call", "outcome": "ser')  # a line being written
    if ledger is not None:
        (state / LEDGERS).mkdir(exist_ok=True)
        path = state / LEDGERS / f"{data_sha256}.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in ledger))
        (site / SITE_LINK).symlink_to(os.path.relpath(path, site))
    if secagg is not None:
        (site / "secagg.jsonl").write_text("".join(json.dumps(s) + "\n" for s in secagg))
    return site


def ledger_entries(noise: list[float]) -> list[dict]:
    from fl_syft.common.accounting import epsilon

    header = {"kind": "header", "data_sha256": SHA, "epsilon_total": 1.0, "delta": 1e-5, "created": "t"}
    lines = [header, {"kind": "row count", "noise_multiplier": 100.0, "releases": 1, "value": 1432,
                      "epsilon_after": epsilon([100.0], 1e-5)}]
    for i, sigma in enumerate(noise):
        lines.append({"kind": "call", "noise_multiplier": sigma, "releases": 1,
                      "epsilon_after": epsilon([100.0, *noise[:i + 1]], 1e-5), "function": "ml_experiment"})
    return lines


def call(n: int, outcome: str = "served", **extra) -> dict:
    return {"time": f"2026-12-02T01:00:{n:02d}+0000", "event": "call", "call": f"c{n}", "function": "ml_experiment",
            "requester": "ana@example.com", "outcome": outcome, "epsilon_charged": 0.01 if outcome == "served" else 0,
            "epsilon_spent": 0.1 + n / 100, "epsilon_total": 1.0, **extra}


@pytest.fixture
def state(tmp_path) -> Path:
    state = tmp_path / "state"
    audit = [{"time": "2026-12-02T01:00:00+0000", "event": "decision", "requester": "ana@example.com",
              "function": "ml_experiment", "decision": "approved", "reason": "approved: vetted function"},
             {"time": "2026-12-02T01:00:01+0000", "event": "decision", "requester": "eve@example.com",
              "function": "peek", "decision": "denied", "reason": "denied: 'peek' is not on this site's allow-list"},
             *[call(n) for n in range(2, 14)],
             call(14, "refused", reason="privacy budget exhausted: epsilon 0.23 of 1 is spent and this call needs 3"),
             {"time": "2026-12-02T01:00:15+0000", "event": "charged", "call": "c15", "function": "ml_experiment",
              "requester": "ana@example.com", "epsilon_charged": 0.01, "epsilon_spent": 0.25, "epsilon_total": 1.0}]
    write_site(state, "site-10", [], ledger=None, data_sha256="cd" * 32)
    write_site(state, "site-2", audit, secagg=[["s1", 1, "keys"], ["s1", 1, "mask"], ["s1", 1, "confirm"],
                                              ["s1", 1, "unmask"], ["s1", 2, "keys"], ["s1", 2, "mask"]],
               ledger=ledger_entries([20.0, 20.0, 30.0]))
    (state / LEDGERS / f"{'ef' * 32}.reset-20261201T000000.jsonl").write_text(
        json.dumps({**ledger_entries([])[0], "data_sha256": "ef" * 32}) + "\n")
    return state


def test_status_reads_each_sites_policy_budget_requests_calls_and_rounds(state):
    view = read_state(state)
    assert [s["name"] for s in view["sites"]] == ["site-2", "site-10"]
    site = view["sites"][0]
    kept = summary(state / "site-2" / SITE_LINK)
    assert site["budget"]["epsilon_spent"] == kept.epsilon_spent and site["budget"]["published_rows"] == 1432
    assert site["budget"]["epsilon_left"] == pytest.approx(1.0 - kept.epsilon_spent)
    assert [r["decision"] for r in site["requests"]] == ["approved", "denied"]
    assert [c["outcome"] for c in site["calls"]] == ["served"] * 12 + ["refused", "charged"]
    assert site["calls"][-2]["reason"].startswith("privacy budget exhausted") and site["unreadable_audit_lines"] == 0
    assert site["secure_aggregation"] == {"sessions": 1, "masked": 2, "unmasked": 1, "rounds": [
        {"session": "s1", "round": 1, "steps": ["keys", "mask", "confirm", "unmask"]},
        {"session": "s1", "round": 2, "steps": ["keys", "mask"]}]}
    assert site["policy"]["epsilon"] == 1.0 and site["running"] is None and site["rows"] == 1500
    assert view["sites"][1]["budget"] is None and view["sites"][1]["calls"] == []
    assert [Path(o["ledger"]).name for o in view["other_ledgers"]] == [f"{'ef' * 32}.reset-20261201T000000.jsonl"]


def test_status_prints_a_short_summary_and_everything_as_json_never_a_password(state, capsys):
    assert main(["status", "--state-dir", str(state), "--last", "3"]) == 0
    text = capsys.readouterr().out
    spent = summary(state / "site-2" / SITE_LINK).epsilon_spent
    assert f"epsilon {spent:.4g} of 1 spent, {1 - spent:.4g} left (delta 1e-05), over 3 charged calls" in text
    assert "1 approved (ml_experiment), 1 denied\n" in text
    assert "denied peek from eve@example.com: denied: 'peek' is not on this site's allow-list" in text
    assert "14: 12 served, 1 refused, 1 charged; the last 3 (--all: every one)" in text
    assert "refused: privacy budget exhausted: epsilon 0.23 of 1" in text and "01:00:11" not in text
    assert "2 rounds masked, 1 unmasked, in 1 session (1 masked but not unmasked here" in text
    assert "site-10: not running" in text and "no ledger yet" in text
    assert "1 more ledger of rows no site holds now (--all lists them)" in text
    assert main(["status", "--state-dir", str(state), "--all"]) == 0
    everything = capsys.readouterr().out
    assert "01:00:02" in everything and "reset-20261201T000000.jsonl: epsilon 0 of 1 spent" in everything
    assert main(["status", "--state-dir", str(state / "site-2"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["sites"]] == ["site-2"] and len(doc["sites"][0]["calls"]) == 14
    assert doc["other_ledgers"] == []  # one site's directory: the store is its state root's
    assert SECRET not in text + everything + json.dumps(doc)


@pytest.mark.parametrize("args, message", [
    (["--state-dir", "{tmp}/nothing"], "--state-dir {tmp}/nothing: no fl-syft site here"),
    (["--state-dir", "{tmp}", "--last", "0"], "--last 0 must be at least 1 (or give --all)"),
])
def test_status_of_no_site_or_a_bad_count_is_one_line(tmp_path, capsys, args, message):
    assert main(["status", *[a.format(tmp=tmp_path) for a in args]]) == 2
    assert message.format(tmp=tmp_path) in error_line(capsys.readouterr().err)


def test_a_site_is_running_only_while_the_process_its_lock_names_lives(state):
    lock = state / "site-2" / ".lock"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()",
                             "fl_syft.owner.datasite"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdout.readline()  # started (its command line is its own)
    lock.write_text(f"datasite site-2 (PID {proc.pid}, since 2026-12-02 01:00:00)")
    assert read_state(state)["sites"][0]["running"] == lock.read_text()
    proc.communicate(b"")
    assert read_state(state)["sites"][0]["running"] is None
    lock.write_text(f"datasite site-2 (PID {os.getpid()}, since 2026-12-02 01:00:00)")  # alive, but not a site
    assert read_state(state)["sites"][0]["running"] is None


def test_a_call_is_one_line_with_who_what_epsilon_and_what_is_left():
    assert call_line({"site": "a", **call(2)}) == ("a: served ml_experiment to ana@example.com; epsilon 0.01 charged, "
                                                   "0.12 of 1 spent, 0.88 left")
    refused = call(3, "refused", reason="config local_steps=5000\nis outside [1, 100]")
    assert call_line({"site": "a", **refused}) == ("a: refused ml_experiment from ana@example.com: config "
                                                   "local_steps=5000 is outside [1, 100]; nothing charged, 0.13 of 1 "
                                                   "spent, 0.87 left")
    plain = {k: v for k, v in call(4).items() if not k.startswith("epsilon")}
    assert call_line({"site": "a", **plain}) == "a: served ml_experiment to ana@example.com"


def test_the_owners_terminal_follows_decisions_and_calls_as_they_are_written(state):
    audit = state / "site-2" / "audit.jsonl"
    lines: queue.Queue[str] = queue.Queue()
    follow([state / "site-2"], emit=lines.put, poll_seconds=0.01)
    with open(audit, "a") as f:  # completes the line being written, then two new entries
        f.write('ved"}\n' + json.dumps({"site": "site-2", **call(20)}) + "\n")
        f.flush()
        f.write(json.dumps({"site": "site-2", "event": "charged", "function": "ml_experiment"}) + "\n")
        f.write(json.dumps({"site": "site-2", "event": "decision", "decision": "denied", "function": "x",
                            "requester": "eve@example.com", "reason": "denied: not vetted"}) + "\n")
    assert lines.get(timeout=60) == call_line({"site": "site-2", **call(20)})
    assert lines.get(timeout=60) == "site-2: denied x from eve@example.com: denied: not vetted"


# --- real datasites ------------------------------------------------------------------------------

def peek(data, global_params, config):
    return data[:1]


def status(state: Path, *flags: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fl_syft", "status", "--state-dir", str(state), *flags],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.syft
def test_status_shows_what_real_sites_approved_ran_and_have_left_running_and_stopped(small_idx, tmp_path):
    from syft_helpers import login, submit, wait_decision

    from fl_syft.owner.network import free_base_port

    state, out, terminal = tmp_path / "state", tmp_path / "run", tmp_path / "launcher.err"
    with open(terminal, "w") as err:
        launcher = subprocess.Popen([sys.executable, "-m", "fl_syft", "launch", "--data", f"idx:{small_idx}",
                                     "--base-port", str(free_base_port(2)), "--state-dir", str(state),
                                     "--dp-epsilon", "1"], stdout=subprocess.DEVNULL, stderr=err)
    try:
        while not (state / "datasites.json").exists():
            assert launcher.poll() is None, terminal.read_text()[-3000:]
            time.sleep(0.2)
        connection = state / "datasites.json"
        assert main(["run", "--connection", str(connection), "--data", f"idx:{small_idx}", "--features", "pixels",
                     "--rounds", "2", "--epsilon", "0.3", "--secure-aggregation", "--out", str(out)]) == 0
        client = login(connection)
        asset = client.datasets[0].assets[0]
        for config in ({**DP, "local_steps": 5000}, {**DP, "local_steps": 100, "noise_multiplier": 0.5}):
            with pytest.raises(Exception, match="refused ml_experiment"):
                client.code.ml_experiment(data=asset, global_params={}, config=config).get()
        submit(client, peek, global_params=dict, config=dict)
        assert "REJECTED" in str(wait_decision(client, "peek").status)
        running = json.loads(status(state, "--json"))
        text = status(state, "--all")
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait()
    assert launcher.returncode == 0, terminal.read_text()[-3000:]
    stopped = json.loads(status(state, "--json"))

    site = running["sites"][0]
    ledger = [json.loads(line) for line in (state / "site-1" / SITE_LINK).read_text().splitlines()]
    afters = [e["epsilon_after"] for e in ledger if "epsilon_after" in e]
    charges = [b - a for a, b in zip(afters[:-1], afters[1:], strict=True)]  # each call's cost, as charged
    served = [c for c in site["calls"] if c["outcome"] == "served"]
    refused = [c for c in site["calls"] if c["outcome"] == "refused"]
    assert len(served) == len(charges) == 2 and [c["outcome"] for c in site["calls"]][-2:] == ["refused"] * 2
    assert [c["epsilon_charged"] for c in served] == pytest.approx(charges, rel=1e-9)
    assert "is outside [1, 100]" in refused[0]["reason"] and "budget exhausted" in refused[1]["reason"]
    kept = summary(state / "site-1" / SITE_LINK)
    assert site["budget"]["epsilon_spent"] == kept.epsilon_spent == served[-1]["epsilon_spent"]
    assert site["budget"]["epsilon_left"] == pytest.approx(1.0 - kept.epsilon_spent, rel=1e-12)
    assert [(r["function"], r["decision"]) for r in site["requests"]] == [("ml_experiment", "approved"),
                                                                         ("peek", "denied")]
    assert site["secure_aggregation"]["masked"] == site["secure_aggregation"]["unmasked"] == 2
    assert site["running"] and "site-1" in site["running"] and stopped["sites"][0]["running"] is None
    assert [{**s, "running": None} for s in running["sites"]] == stopped["sites"]

    assert "site-1: running (datasite site-1" in text and "approved ml_experiment from scientist@" in text
    assert f"epsilon {kept.epsilon_spent:.4g} of 1 spent, {1 - kept.epsilon_spent:.4g} left" in text
    assert "refused: privacy budget exhausted" in text and "2 rounds masked, 2 unmasked, in 1 session" in text
    assert "denied peek from scientist@fl-syft.example.com" in text

    log = (state / "site-1" / "site.log").read_text()
    assert "Traceback" not in log and "Error:" not in log, log[-3000:]
    refusals = [line for line in log.splitlines() if "site-1: refused ml_experiment from scientist@" in line]
    assert len(refusals) == 2 and "budget exhausted" in refusals[1] and "nothing charged" in refusals[1]
    assert sum("site-1: served ml_experiment to scientist@" in line for line in log.splitlines()) == 2
    owner = terminal.read_text()  # what the owner running the launcher saw
    assert owner.count("fl-syft: site-1: served ml_experiment to scientist@") == 2
    assert owner.count("fl-syft: site-1: refused ml_experiment from scientist@") == 2
    assert "fl-syft: site-1: approved ml_experiment from scientist@" in owner

