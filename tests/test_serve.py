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
from fl_syft.owner.network import free_base_port

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


def test_two_owners_serve_their_own_files_and_a_scientist_trains_over_both(small_idx, tmp_path, capsys):
    """Each owner generates their own password; the scientist runs with the two invites over HTTPS
    (certificates pinned); plain HTTP gets no API answer; an invite with a wrong fingerprint is refused."""
    import requests

    small = load_mnist(f"idx:{small_idx}")
    npz, csv = tmp_path / "hospital.npz", tmp_path / "clinic.csv"
    np.savez(npz, X=small.X_train[:1200], y=small.y_train[:1200])
    header = "label," + ",".join(f"px{i}" for i in range(784))
    rows = np.column_stack([small.y_train[1200:2000], small.X_train[1200:2000]])
    np.savetxt(csv, rows, fmt="%d", delimiter=",", header=header, comments="")
    env = {k: v for k, v in os.environ.items() if k != "FL_SYFT_DS_PASSWORD"}
    ports = [free_base_port(1), free_base_port(1)]
    owners = [start_serve(npz, "hospital-a", ports[0], tmp_path / "a", env),
              start_serve(csv, "clinic-b", ports[1], tmp_path / "b", env)]
    invites = [tmp_path / "a" / "hospital-a" / "invite.json", tmp_path / "b" / "clinic-b" / "invite.json"]
    try:
        for proc, state in zip(owners, (tmp_path / "a", tmp_path / "b"), strict=True):
            wait_ready(proc, state)
        docs = [json.loads(p.read_text()) for p in invites]
        assert docs[0]["password"] != docs[1]["password"]  # each owner's own
        assert [d["url"] for d in docs] == [f"https://127.0.0.1:{p}" for p in ports]
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in invites)
        card = json.loads((invites[0].parent / "card.json").read_text())
        assert "password" not in card and card["fingerprint"] == docs[0]["fingerprint"]
        with pytest.raises(requests.ConnectionError):  # TLS only: plain HTTP is not answered
            requests.get(f"http://127.0.0.1:{ports[0]}/api/v2/metadata", timeout=10)

        forged = tmp_path / "forged.json"
        forged.write_text(json.dumps({**docs[0], "fingerprint": "ab" * 32}))
        rc = main(["run", "--invite", str(forged), "--invite", str(invites[1]), "--rounds", "1",
                   "--out", str(tmp_path / "forged-run")])
        assert rc == 1 and not any((tmp_path / "forged-run").glob("*"))  # nothing trained or written
        line = error_line(capsys.readouterr().err)
        assert line.startswith(f"fl-syft: error: hospital-a at https://127.0.0.1:{ports[0]} presents a TLS "
                               f"certificate with SHA-256 {docs[0]['fingerprint'][:16]}..., not the "
                               "abababababababab... its invite pins")
        assert line.endswith("ask its owner for a new invite); nothing was sent")

        out = tmp_path / "run"
        assert main(["run", "--invite", str(invites[0]), "--invite", str(invites[1]), "--data", f"idx:{small_idx}",
                     "--rounds", "2", "--local-iters", "3", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        sites = metrics["rounds"][-1]["sites"]
        assert set(sites) == {"hospital-a", "clinic-b"}
        assert sites["hospital-a"]["n_samples"] == 1200 - 60 and sites["clinic-b"]["n_samples"] == 800 - 40
        assert metrics["final"]["global_test_accuracy"] > 0.7
        assert "password" not in json.dumps(metrics["config"])  # the run saves where the invites are, not logins
    finally:
        for proc in owners:
            proc.send_signal(signal.SIGTERM)
    for proc in owners:
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
    assert "invite for the data scientist" in stdout and "fl-syft run --invite" in stdout


@pytest.mark.parametrize("content, message", [
    ("1,2,3\n", "row 1: has 3 columns, needs 785 (a label and 784 pixels): fix the file"),
    ("label," + ",".join(["0"] * 784) + "\n", "holds no rows"),
])
def test_serve_refuses_a_bad_file_in_one_line(tmp_path, capsys, content, message):
    bad = tmp_path / "rows.csv"
    bad.write_text(content)
    rc = main(["serve", "--data", str(bad), "--name", "x", "--port", str(free_base_port(1)),
               "--state-dir", str(tmp_path / "state")])
    assert rc == 1 and message in error_line(capsys.readouterr().err)


def test_owners_who_list_each_other_as_peers_aggregate_securely(small_idx, tmp_path):
    """Each owner starts once (the site makes its identity, its card and its invite), the owners
    exchange cards (--peers: the other's card, or a folder of cards with one's own among them),
    restart with --keep, and the scientist, with the two invites, learns only the sums."""
    small = load_mnist(f"idx:{small_idx}")
    files = [tmp_path / "a.npz", tmp_path / "b.npz"]
    np.savez(files[0], X=small.X_train[:1000], y=small.y_train[:1000])
    np.savez(files[1], X=small.X_train[1000:2000], y=small.y_train[1000:2000])
    env = {k: v for k, v in os.environ.items() if k != "FL_SYFT_DS_PASSWORD"}
    names, states = ["north", "south"], [tmp_path / "n", tmp_path / "s"]
    owners = [start_serve(f, n, free_base_port(1), s, env) for f, n, s in zip(files, names, states, strict=True)]
    for proc, state in zip(owners, states, strict=True):
        wait_ready(proc, state)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert "card for the other data owners' --peers" in out
    cards = tmp_path / "cards"
    cards.mkdir()
    for name, state in zip(names, states, strict=True):
        (cards / f"{name}.json").write_text((state / name / "card.json").read_text())
    peers = [cards / "south.json", cards]  # north: south's card; south: both cards
    ports = [free_base_port(1), free_base_port(1)]
    owners = [subprocess.Popen([sys.executable, "-m", "fl_syft", "serve", "--keep", "--name", n, "--port", str(p),
                                "--state-dir", str(s), "--peers", str(c), *PLAIN, "--min-rows", "10"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for n, p, s, c in zip(names, ports, states, peers, strict=True)]
    try:
        for proc, state in zip(owners, states, strict=True):
            wait_ready(proc, state)
        invites = []
        for name, state, port in zip(names, states, ports, strict=True):
            doc = json.loads((state / name / "invite.json").read_text())
            assert doc["url"] == f"https://127.0.0.1:{port}"  # the kept certificate, the port of this start
            invites += ["--invite", str(state / name / "invite.json")]
        out = tmp_path / "run"
        assert main(["run", *invites, "--data", f"idx:{small_idx}", "--rounds", "2", "--local-iters", "3",
                     "--secure-aggregation", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["config"]["secure_aggregation"] == {"threshold": 2}
        assert metrics["rounds"][-1]["secure_aggregation"]["survivors"] == ["north", "south"]
    finally:
        for proc in owners:
            proc.send_signal(signal.SIGTERM)
    for proc in owners:
        stdout, _ = proc.communicate(timeout=60)
        assert "secure aggregation among 2 sites (this one among them), threshold 2" in stdout
