"""A finite budget through real datasites, as a user meets it: Ctrl-C says how to resume and the
resume finds its sites again; a run whose site died mid-round (the round charged, its answer
lost) resumes to its last round within the budget; a run on spent sites is refused before
anything is submitted, trained or charged. The tests share one deployment and run in order:
the budget they spend is the sites' real one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import error_line
from syft_helpers import running_deployment

from fl_syft.cli import main
from fl_syft.common.accounting import epsilon
from fl_syft.owner.policy import owner_policy

pytestmark = pytest.mark.syft


@pytest.fixture(scope="module")
def deployment(small_idx, tmp_path_factory):
    yield from running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("budget"),
                                  policy=owner_policy(epsilon=1.0))


def run_args(deployment, small_idx, out: Path, *extra: str) -> list[str]:
    return ["run", "--connection", str(deployment.connection_file), "--data", f"idx:{small_idx}", "--features",
            "pixels", "--out", str(out), *extra]


def rounds_done(out: Path) -> int:
    try:
        return len(json.loads((out / "metrics.json").read_text())["rounds"])
    except (OSError, ValueError):  # not written yet, or being replaced
        return 0


def charges(deployment, site: str) -> int:
    """The site's ledger entries for calls of the vetted function (one per call, charged before it runs)."""
    lines = (deployment.state / site / "privacy-ledger.jsonl").read_text().splitlines()
    return sum(json.loads(line).get("function") == "ml_experiment" for line in lines)


def spent(deployment, site: str) -> float:
    lines = (deployment.state / site / "privacy-ledger.jsonl").read_text().splitlines()
    return max([0.0, *(json.loads(line).get("epsilon_after", 0.0) for line in lines)])


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fl_syft", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_ctrl_c_says_how_to_resume_and_the_resume_finds_its_sites_again(deployment, small_idx, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "interrupted"
    run = start(run_args(deployment, small_idx, out, "--epsilon", "0.2", "--rounds", "12", "--local-steps", "1"))
    deadline = time.monotonic() + 180
    while rounds_done(out) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert run.returncode == 130, err[-2000:]
    done = rounds_done(out)
    assert last == (f"fl-syft: interrupted after round {done}: rounds 1..{done} are saved in {out}; to continue: "
                    f"fl-syft run --resume {out}")
    target = json.loads((out / "metrics.json").read_text())["config"]["privacy"]
    monkeypatch.chdir(tmp_path)  # no .fl-syft/datasites.json here: the sites come from the run's own record
    # More rounds than planned (this crashed with a TypeError): what the run had left, spread over them.
    assert main(["run", "--resume", str(out), "--data", f"idx:{small_idx}", "--rounds", "14"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 14 and metrics["config"]["privacy"]["replans"][0]["at_round"] == done + 1
    for site, info in target["sites"].items():  # each site ends where the first plan would have left it
        planned = epsilon([*(float(s) for s, n in info["released"].items() for _ in range(n)),
                           *[target["noise_multiplier"]] * target["noisy_steps_per_site"]], info["policy"]["delta"])
        assert spent(deployment, site) == pytest.approx(planned, rel=1e-6)


def test_a_run_whose_site_died_mid_round_resumes_to_its_last_round_within_the_budget(deployment, small_idx,
                                                                                     tmp_path):
    out = tmp_path / "killed"
    before = charges(deployment, "site-1")
    # No --epsilon: the run spends all that is left, so a lost round re-spent would not fit.
    run = start(run_args(deployment, small_idx, out, "--rounds", "8", "--local-steps", "2", "--retries", "0"))
    deadline = time.monotonic() + 180
    # Kill site-1 once it has charged a round whose answer the run has not received (round 3 on).
    while time.monotonic() < deadline:
        done = rounds_done(out)
        if done >= 2 and charges(deployment, "site-1") - before > done:
            deployment.procs["site-1"].kill()
            break
        time.sleep(0.005)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1 and "--resume" in err, err[-2000:]
    done = rounds_done(out)
    assert charges(deployment, "site-1") - before > done  # a charged round was lost
    deployment.restart("site-1")
    assert main(["run", "--resume", str(out), "--connection", str(deployment.connection_file)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, 9))
    plan = metrics["config"]["privacy"]
    assert plan["replans"][0]["at_round"] == done + 1
    for site in ("site-1", "site-2"):
        assert spent(deployment, site) <= 1.0 * (1 + 1e-9)
        assert metrics["final"]["epsilon_spent"][site]["epsilon"] == pytest.approx(spent(deployment, site), rel=1e-9)
    assert spent(deployment, "site-1") == pytest.approx(1.0, rel=1e-6)  # all that was left, and no more


@pytest.mark.parametrize("extra", [[], ["--secure-aggregation"], ["--epsilon", "0.5"], ["--rounds", "1"]],
                         ids=["default", "secure", "epsilon", "one-round"])
def test_a_run_on_spent_sites_is_refused_before_anything_is_submitted(deployment, small_idx, tmp_path, capsys,
                                                                      extra):
    ledgers = {site: (deployment.state / site / "privacy-ledger.jsonl").read_bytes() for site in ("site-1", "site-2")}
    decisions = (deployment.state / "site-1" / "audit.jsonl").read_text().count('"decision"')
    assert main(run_args(deployment, small_idx, tmp_path / "second", *extra)) == 2
    line = error_line(capsys.readouterr().err)
    assert "site-1 has" in line and "of its 1" in line and "--dp-epsilon" in line, line
    assert "left" in line and "spent" in line
    assert {site: (deployment.state / site / "privacy-ledger.jsonl").read_bytes() for site in ledgers} == ledgers
    assert (deployment.state / "site-1" / "audit.jsonl").read_text().count('"decision"') == decisions
    assert not (tmp_path / "second" / "metrics.json").exists()
