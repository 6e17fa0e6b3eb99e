"""A datasite that dies ends its ``serve`` (or the ``launch`` it was the last of): one line saying
why, a non-zero exit and the state directory released, so the owner can start it again."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import numpy as np
import psutil
import pytest
from conftest import PLAIN, error_line, synthetic_shard
from test_serve import start_serve, wait_ready

from fl_syft.owner.datasite import SiteSpec
from fl_syft.owner.launch import Deployment, LaunchOptions
from fl_syft.owner.network import free_base_port
from fl_syft.owner.provision import LaunchError


@pytest.fixture
def own_signal_handlers():
    """serve_forever installs its own SIGTERM/SIGINT handlers: pytest's are put back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def site_process(deployment: Deployment, name: str, command: str) -> subprocess.Popen:
    """A real process standing in for site ``name`` (serve_forever watches only its exit), with a log."""
    site_dir = deployment.state / name
    site_dir.mkdir(parents=True)
    (site_dir / "site.log").write_text(f"{name} serving\n{name}: the last thing it said\n  (its source line)\n")
    deployment.specs[name] = SiteSpec(name=name, host="127.0.0.1", port=1, state_dir=str(site_dir),
                                      admin_email="a@x", admin_password="p", ds_email="d@x", ds_password="p")
    return subprocess.Popen([sys.executable, "-c", command])


def test_launch_keeps_serving_while_a_site_is_left_and_stops_when_none_is(tmp_path, caplog, own_signal_handlers):
    deployment = Deployment(LaunchOptions(state_dir=tmp_path))
    go = tmp_path / "go"  # site-2 exits (code 3) only once site-1's death has been reported
    deployment.procs["site-1"] = site_process(deployment, "site-1", "import time; time.sleep(600)")
    wait_for_go = f"import os, sys, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)\nsys.exit(3)"
    deployment.procs["site-2"] = site_process(deployment, "site-2", wait_for_go)
    deployment.procs["site-1"].kill()
    deployment.procs["site-1"].wait()

    class Go(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            go.touch()

    logging.getLogger("fl_syft.launch").addHandler(handler := Go(level=logging.ERROR))
    try:
        with caplog.at_level(logging.ERROR, "fl_syft.launch"), pytest.raises(LaunchError) as err:
            deployment.serve_forever()
    finally:
        logging.getLogger("fl_syft.launch").removeHandler(handler)
        deployment.stop()
    assert [r.getMessage() for r in caplog.records] == [
        f"site-1 stopped unexpectedly (killed by SIGKILL; its last log line: site-1: the last thing it said); the "
        f"other sites keep running (site-2); log: {tmp_path / 'site-1' / 'site.log'}"]
    assert err.value.for_cli() == (
        f"site-2 stopped unexpectedly (and no other site is running) (exit code 3; its last log line: site-2: the "
        f"last thing it said; log: {tmp_path / 'site-2' / 'site.log'}): nothing is served any more; see the log, "
        "then start again with --keep and the same flags (--peers, --dp-epsilon ...: --keep keeps the state, not the "
        "flags)")


@pytest.mark.syft
def test_serve_ends_when_its_datasite_is_killed_and_starts_again_with_keep(tmp_path):
    rows = tmp_path / "rows.npz"
    shard = synthetic_shard(80)
    np.savez(rows, X=shard[:, :784], y=shard[:, 784])
    state, port, env = tmp_path / "state", free_base_port(1), {**os.environ, "FL_SYFT_DS_PASSWORD": "pw-dead-site-1"}
    owner = start_serve(rows, "clinic", port, state, env)
    try:
        wait_ready(owner, state)
        sites = [p for p in psutil.Process(owner.pid).children() if "fl_syft.owner.datasite" in p.cmdline()]
        assert len(sites) == 1
        sites[0].send_signal(signal.SIGKILL)
        _, stderr = owner.communicate(timeout=120)  # it ends by itself: nothing else stops it
    finally:
        if owner.poll() is None:
            owner.kill()
    line = error_line(stderr)
    assert owner.returncode == 1
    assert line.startswith("fl-syft: error: clinic stopped unexpectedly (killed by SIGKILL; its last log line: ")
    assert line.endswith(f"; log: {state / 'clinic' / 'site.log'}): nothing is served any more; see the log, then "
                         "start again with --keep and the same flags (--peers, --dp-epsilon ...: --keep keeps the "
                         "state, not the flags)")
    assert not (state / "datasites.json").exists()

    again = subprocess.Popen([sys.executable, "-m", "fl_syft", "serve", "--keep", "--name", "clinic", "--port",
                              str(port), "--state-dir", str(state), *PLAIN, "--min-rows", "10"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_ready(again, state)  # the lock was released: the state directory is taken over
    finally:
        again.send_signal(signal.SIGTERM)
        _, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
