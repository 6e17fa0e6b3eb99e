"""What a run refuses before it starts, and what it reports when it ends (no datasite needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import PLAIN, error_line

from fl_syft.cli import main
from fl_syft.common.data import write_idx
from fl_syft.owner.network import free_base_port, print_table

FAST = ["--rounds", "1", "--local-iters", "2", *PLAIN]


def run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, error_line(capsys.readouterr().err)


def unreachable_connection(tmp_path) -> str:
    """A connection file naming a site nobody serves: a run that gets past its checks fails on it."""
    path = tmp_path / "datasites.json"
    path.write_text(json.dumps({"datasites": [{"name": "site-1", "url": "http://127.0.0.1",
                                              "port": free_base_port(1), "ds_email": "a@example.com"}]}))
    return str(path)


def test_out_that_is_a_file_is_refused_before_connecting(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FL_SYFT_DS_PASSWORD", "x")
    (tmp_path / "taken").write_text("mine")
    rc, line = run(capsys, "run", "--connection", unreachable_connection(tmp_path), "--out", str(tmp_path / "taken"))
    assert rc == 2 and "--out" in line and "is a file, not a directory" in line
    assert (tmp_path / "taken").read_text() == "mine"


def test_out_that_cannot_be_written_is_refused_before_connecting(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FL_SYFT_DS_PASSWORD", "x")
    (tmp_path / "file").write_text("")
    rc, line = run(capsys, "run", "--connection", unreachable_connection(tmp_path),
                   "--out", str(tmp_path / "file" / "run"))
    assert rc == 2 and "is not writable" in line and "choose another --out" in line


def test_out_holding_a_run_is_refused_unless_overwrite(small_idx, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["simulate", "--data", f"idx:{small_idx}", *FAST, "--out", str(out)]
    assert main(args) == 0
    checkpoint = (out / "checkpoint.npz").read_bytes()
    rc, line = run(capsys, *args)
    assert rc == 2 and "already holds a run (metrics.json, checkpoint.npz, model.npz)" in line
    assert "--resume" not in line and "--overwrite" in line  # a simulation cannot be resumed
    # A run over datasites can: its refusal says how.
    rc, line = run(capsys, "run", "--datasite", "http://127.0.0.1:1", "--out", str(out))
    assert rc == 2 and f"continue it with fl-syft run --resume {out}" in line
    assert (out / "checkpoint.npz").read_bytes() == checkpoint
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert (out / "checkpoint.npz").read_bytes() != checkpoint


def test_an_empty_test_set_is_a_data_error_and_nothing_is_written(small_idx, tmp_path, capsys):
    data = tmp_path / "idx"
    data.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (data / name).write_bytes((small_idx / name).read_bytes())
    write_idx(data / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(data / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    out = tmp_path / "run"
    rc, line = run(capsys, "simulate", "--data", f"idx:{data}", *FAST, "--out", str(out))
    assert rc == 1 and "data error" in line and "the test set holds no images" in line
    assert not (out / "metrics.json").exists()


def test_metrics_json_is_strict_json(small_idx, tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", "--data", f"idx:{small_idx}", *FAST, "--out", str(out)]) == 0
    json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))


def test_lbfgs_runs_at_most_the_rounds_asked_and_says_why_it_stopped(small_idx, tmp_path):
    out = tmp_path / "lbfgs"
    assert main(["simulate", *PLAIN, "--data", f"idx:{small_idx}", "--algorithm", "lbfgs", "--rounds", "7",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == metrics["final"]["rounds_run"] == 7
    assert metrics["final"]["stopped"] == "round cap reached"
    assert 1 <= metrics["final"]["round"] <= 7
    report = (out / "report.md").read_text()
    assert "| round cap | 7 |" in report and "| rounds run | 7 (round cap reached) |" in report


def test_lbfgs_that_converges_reports_it(small_idx, tmp_path):
    out = tmp_path / "lbfgs"
    assert main(["simulate", *PLAIN, "--data", f"idx:{small_idx}", "--algorithm", "lbfgs", "--C", "0.01",
                 "--out", str(out)]) == 0
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["stopped"].startswith("converged") and final["rounds_run"] < 500
    assert f"| rounds run | {final['rounds_run']} (converged" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["run", "--algorithm", "lbfgs", "--min-sites", "1"], "--min-sites cannot apply to lbfgs: every site must answer"),
    (["run", "--datasite", "http://127.0.0.1:9000", "--datasite", "http://127.0.0.1:9000/"],
     "--datasite http://127.0.0.1:9000/ is given twice (also as http://127.0.0.1:9000)"),
    (["run", "--datasite", "http://HOST.example.com:9000", "--datasite", "http://host.example.com:9000"],
     "is given twice"),
    (["run", "--approval-timeout", "-5"], "--approval-timeout must be > 0 seconds, got -5.0"),
    (["launch", "--keep", "--sites", "3"], "--sites: --keep restarts the sites with the rows they hold: drop them"),
    (["demo", "--keep", "--data", "idx:/x", "--partition", "dirichlet"], "--data, --partition: --keep restarts"),
    (["launch", "--keep", "--scenario", "dirichlet-0.1-10"], "--scenario: --keep restarts"),
])
def test_flags_that_would_be_ignored_are_refused(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("FL_SYFT_DS_PASSWORD", "x")
    rc, line = run(capsys, *argv)
    assert rc == 2 and message in line


def test_resume_takes_only_rounds(small_idx, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", "--data", f"idx:{small_idx}", *FAST, "--out", str(out)]) == 0
    for extra, named in ((["--algorithm", "lbfgs"], "--algorithm"), (["--local-iters", "9"], "--local-iters"),
                         (["--out", str(tmp_path / "other")], "--out"), (["--features", "pixels"], "--features")):
        rc, line = run(capsys, "run", "--resume", str(out), *extra)
        assert rc == 2 and f"{named}: --resume continues the run with its saved settings" in line


def test_verbose_is_accepted_after_the_command(small_idx, capsys):
    assert main(["simulate", "--verbose", "--data", f"idx:{small_idx}", *FAST]) == 0


def test_simulate_help_offers_only_what_simulate_does(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    assert "--resume" not in capsys.readouterr().out


def test_a_wildcard_bind_prints_addresses_to_connect_to(capsys):
    urls = print_table([{"name": "site-1", "url": "http://0.0.0.0:8080", "rows": 5, "privacy": "no DP"}], "conn.json",
                       "0.0.0.0")
    printed = capsys.readouterr().out
    assert "0.0.0.0" not in printed and urls and all(u.startswith("http://") and u.endswith(":8080") for u in urls)
    assert "http://127.0.0.1:8080" in urls
