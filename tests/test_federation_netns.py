"""A federation across machines: three data owners and the scientist each in a Linux network
namespace of their own, joined by a bridge in a fifth (all made here, with addresses assigned
here; no traffic leaves them). Each owner runs ``fl-syft serve`` over TLS, the owners exchange
cards, the scientist runs with the three invites under secure aggregation; one owner's link is
cut mid-run and the rounds complete with the other two; once the link is back the run resumes
with all three."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PLAIN

from fl_syft.common.data import load_mnist

pytestmark = pytest.mark.syft

OWNERS = ["north", "south", "east"]
PORT = 8443  # the same in every namespace: each owner has a machine of their own


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def network():
    """Namespaces ``<tag>-<node>`` for the owners, the scientist ("ds") and the switch ("sw"), each
    node's veth plugged into the switch's bridge, addresses 10.X.Y.1..4/24; removed afterwards."""
    tag, pid = f"fl{os.getpid() % 100000}", os.getpid()
    subnet = f"10.{200 + pid % 50}.{pid % 250}"
    nodes = [*OWNERS, "ds"]
    ns = {node: f"{tag}-{node}" for node in ["sw", *nodes]}
    made = []
    try:
        for name in ns.values():
            ip("netns", "add", name)
            made.append(name)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        for name in made:
            ip("netns", "del", name)
        why = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        pytest.fail(f"network namespaces cannot be made here (ip netns add: {why}): this test needs root and "
                    "iproute2", pytrace=False)
    try:
        ip("-n", ns["sw"], "link", "add", "br0", "type", "bridge")
        ip("-n", ns["sw"], "link", "set", "br0", "up")
        addresses = {}
        for i, node in enumerate(nodes, start=1):
            port, end = f"p{i}", f"e{i}"  # the switch's port, the node's end
            ip("-n", ns["sw"], "link", "add", port, "type", "veth", "peer", "name", end, "netns", ns[node])
            ip("-n", ns["sw"], "link", "set", port, "master", "br0")
            ip("-n", ns["sw"], "link", "set", port, "up")
            addresses[node] = f"{subnet}.{i}"
            ip("-n", ns[node], "addr", "add", f"{addresses[node]}/24", "dev", end)
            ip("-n", ns[node], "link", "set", end, "up")
            ip("-n", ns[node], "link", "set", "lo", "up")
        yield {"ns": ns, "address": addresses,
               "link": {node: (ns["sw"], f"p{i}") for i, node in enumerate(nodes, start=1)}}
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def in_ns(ns: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "fl_syft", *args], **kwargs)


def serve(net, owner: str, state: Path, *extra: str) -> subprocess.Popen:
    return in_ns(net["ns"][owner], "serve", "--name", owner, "--host", net["address"][owner], "--port", str(PORT),
                 "--state-dir", str(state), *PLAIN, *extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                 text=True)


def wait_ready(proc: subprocess.Popen, state: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (state / "datasites.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.3)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        proc.communicate(timeout=60)


def test_serve_x3_and_run_with_invites_across_namespaces_survives_a_cut_link(network, small_idx, tmp_path):
    small = load_mnist(f"idx:{small_idx}")
    states = {owner: tmp_path / owner for owner in OWNERS}
    files = {}
    for i, owner in enumerate(OWNERS):
        files[owner] = tmp_path / f"{owner}.npz"
        np.savez(files[owner], X=small.X_train[i * 1000:(i + 1) * 1000], y=small.y_train[i * 1000:(i + 1) * 1000])

    # First start: each site makes its identity, certificate, card and invite; the owners swap cards.
    owners = [serve(network, owner, states[owner], "--data", str(files[owner])) for owner in OWNERS]
    try:
        for proc, owner in zip(owners, OWNERS, strict=True):
            wait_ready(proc, states[owner])
    finally:
        stop(owners)
    cards = tmp_path / "cards"
    cards.mkdir()
    for owner in OWNERS:
        (cards / f"{owner}.json").write_text((states[owner] / owner / "card.json").read_text())
    owners = [serve(network, owner, states[owner], "--keep", "--peers", str(cards)) for owner in OWNERS]
    ds = network["ns"]["ds"]
    invites = [a for owner in OWNERS for a in ("--invite", str(states[owner] / owner / "invite.json"))]
    out, log = tmp_path / "run", tmp_path / "run.log"
    try:
        for proc, owner in zip(owners, OWNERS, strict=True):
            wait_ready(proc, states[owner])
        assert json.loads((states["east"] / "east" / "invite.json").read_text())["url"] == \
            f"https://{network['address']['east']}:{PORT}"
        # Not reachable from the scientist's namespace over plain HTTP: TLS only.
        probe = ("import urllib.request, sys\ntry:\n    print(urllib.request.urlopen(sys.argv[1], timeout=5).read())\n"
                 "except Exception as e:\n    print('refused', type(e).__name__)")
        plain = subprocess.run(["ip", "netns", "exec", ds, sys.executable, "-c", probe,
                                f"http://{network['address']['north']}:{PORT}/api/v2/metadata"],
                               capture_output=True, text=True, check=True)
        assert plain.stdout.startswith("refused"), plain.stdout

        with log.open("w") as sink:
            run = in_ns(ds, "run", *invites, "--data", f"idx:{small_idx}", "--rounds", "3", "--local-iters", "3",
                        "--secure-aggregation", "--min-sites", "2", "--retries", "0", "--call-timeout", "15",
                        "--out", str(out), stdout=sink, stderr=subprocess.STDOUT, text=True)
            deadline = time.monotonic() + 600
            while "round   1 " not in log.read_text():
                assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            switch, port = network["link"]["east"]
            ip("-n", switch, "link", "set", port, "down")  # east's cable pulled
            assert run.wait(timeout=900) == 0, log.read_text()[-3000:]
        metrics = json.loads((out / "metrics.json").read_text())
        assert [set(r["secure_aggregation"]["survivors"]) for r in metrics["rounds"]] == \
            [set(OWNERS), {"north", "south"}, {"north", "south"}]
        assert all("east" in r.get("dropped", {}) for r in metrics["rounds"][1:]), \
            [r.get("dropped") for r in metrics["rounds"]]

        ip("-n", switch, "link", "set", port, "up")  # back: the run resumes with all three
        resumed = in_ns(ds, "run", "--resume", str(out), "--rounds", "4", stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
        output, _ = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, output[-3000:]
        metrics = json.loads((out / "metrics.json").read_text())
        assert len(metrics["rounds"]) == 4
        assert set(metrics["rounds"][3]["secure_aggregation"]["survivors"]) == set(OWNERS)
        assert metrics["final"]["global_test_accuracy"] > 0.7
    finally:
        stop(owners)
