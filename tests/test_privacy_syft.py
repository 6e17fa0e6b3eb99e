"""Record-level DP as a user meets it, through real datasites: the scientist plans, spends and sees
the budget; the owner's policy is printed, stored and kept; the notebook shows it."""

from __future__ import annotations

import json

import pytest
from conftest import error_line
from syft_helpers import audit, run_notebook, running_deployment

from fl_syft.cli import main
from fl_syft.owner.policy import owner_policy

pytestmark = pytest.mark.syft


@pytest.fixture(scope="module")
def deployment(small_idx, tmp_path_factory):
    yield from running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("dp"), policy=owner_policy(epsilon=4.0))


def run(deployment, small_idx, out, *extra) -> int:
    return main(["run", "--connection", str(deployment.connection_file), "--data", f"idx:{small_idx}",
                 "--out", str(out), *extra])


def test_the_policy_is_stored_printed_and_published(deployment):
    site = deployment.state / "site-1"
    assert "record-level differential privacy: epsilon 4" in json.loads((site / "status.json").read_text())["privacy"]
    assert "record-level differential privacy: epsilon 4, delta 1e-05" in (site / "site.log").read_text()
    header = json.loads((site / "privacy-ledger.jsonl").read_text().splitlines()[0])
    assert header["epsilon_total"] == 4.0 and len(header["data_sha256"]) == 64


def test_a_run_spends_what_it_asks_and_reports_it(deployment, small_idx, tmp_path):
    out = tmp_path / "run"
    assert run(deployment, small_idx, out, "--epsilon", "1", "--rounds", "3", "--local-steps", "2") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    plan = metrics["config"]["privacy"]
    assert plan["epsilon_per_site"] == pytest.approx(1.0, rel=1e-6) and plan["noisy_steps_per_site"] == 6
    per_round = [r["epsilon_spent"]["site-1"] for r in metrics["rounds"]]
    assert per_round == sorted(per_round) and len(per_round) == 3
    final = metrics["final"]["epsilon_spent"]["site-1"]
    assert final["epsilon"] == pytest.approx(per_round[-1], rel=1e-9)  # the ledger says what the plan said
    assert final["of"] == 4.0 and final["delta"] == 1e-5 and final["epsilon"] <= 1.0 + plan["sites"]["site-1"][
        "spent_before"]
    report = (out / "report.md").read_text()
    assert "## Privacy" in report and "one row of that site's data" in report
    assert "Not released: under differential privacy" in report
    charges = audit(deployment.connection_file, event="charged")
    assert [c["function"] for c in charges].count("ml_experiment") >= 3 and charges[0]["function"] == "row count"


def test_asking_for_more_than_is_left_is_refused_before_anything_runs(deployment, small_idx, tmp_path, capsys):
    rc = run(deployment, small_idx, tmp_path / "run", "--epsilon", "4.5")
    line = error_line(capsys.readouterr().err)
    assert rc == 2 and "--epsilon 4.5: site-1 has" in line and "of its 4 left" in line
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--algorithm", "lbfgs"], "enforce differential privacy, which lbfgs cannot run under"),
    (["--local-iters", "5"], "--local-iters: the sites enforce differential privacy"),
])
def test_what_cannot_run_under_dp_is_refused(deployment, small_idx, tmp_path, capsys, extra, message):
    rc = run(deployment, small_idx, tmp_path / "run", *extra)
    line = error_line(capsys.readouterr().err)
    assert rc == 2 and message in line


def test_the_notebook_shows_the_budget_and_what_the_run_spent(deployment, small_idx):
    nb = run_notebook({"FL_SYFT_CONNECTION": str(deployment.connection_file), "FL_SYFT_ROUNDS": "2",
                       "FL_SYFT_DATA": f"idx:{small_idx}"})
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "site-1: record-level differential privacy: epsilon 4" in printed and "spent so far: epsilon" in printed
    assert "site-1: epsilon spent" in printed and "of 4 (delta 1e-05); left" in printed
    # No PySyft noise in any cell: not printed, nor displayed (sy.syft_function displays a SyftSuccess).
    shown = printed + "".join(o.get("data", {}).get(kind, "") for o in outputs for kind in ("text/plain", "text/html"))
    assert "SyftSuccess" not in shown and "syft.Project" not in shown
    budget = next(c for c in code if any("site-1: epsilon spent" in o.get("text", "") for o in c.outputs))
    assert any("image/png" in o.get("data", {}) for o in budget.outputs)  # the budget, drawn
