"""The owner's state directory: a second start never touches a running deployment, nothing in it
is readable by others, and a kept state takes new passwords (real datasites)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import PLAIN, error_line, plain_policy
from syft_helpers import login

from fl_syft.cli import main
from fl_syft.common.partition import PartitionSpec
from fl_syft.owner.launch import ADMIN_EMAIL, Deployment, LaunchOptions
from fl_syft.owner.network import free_base_port
from fl_syft.owner.state import StateLock, StateLocked

pytestmark = pytest.mark.syft
ROOT = Path(__file__).resolve().parents[1]


def snapshot(state: Path) -> dict[str, str]:
    """path -> (mode, content hash) of every file under ``state`` (the lock file aside)."""
    return {str(p.relative_to(state)): f"{stat.S_IMODE(p.stat().st_mode):o}:"
                                       f"{hashlib.sha256(p.read_bytes()).hexdigest()}"
            for p in sorted(state.rglob("*")) if p.is_file() and p.name != ".lock"}


def loose_entries(state: Path) -> list[str]:
    return [f"{p.relative_to(state)} {stat.S_IMODE(p.lstat().st_mode):o}"
            for p in [state, *state.rglob("*")] if stat.S_IMODE(p.lstat().st_mode) & 0o077]


def start_launcher(small_idx: Path, state: Path, port: int, *extra: str, env: dict | None = None) -> subprocess.Popen:
    data = [] if "--keep" in extra else ["--data", f"idx:{small_idx}"]  # kept sites keep their rows
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch_datasites.py"), *data,
                             "--base-port", str(port), "--state-dir", str(state), *PLAIN, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (state / "datasites.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    return proc


def scientist_run(state: Path, small_idx: Path, out: Path) -> int:
    return main(["run", "--connection", str(state / "datasites.json"), "--data", f"idx:{small_idx}",
                 "--rounds", "1", "--local-iters", "2", "--out", str(out)])


def test_a_second_start_refuses_and_leaves_the_running_deployment_usable(small_idx, tmp_path, capsys):
    state = tmp_path / "state"
    launcher = start_launcher(small_idx, state, free_base_port(2))
    try:
        before = snapshot(state)
        assert before["datasites.json"] and before["secrets.json"] and "site-1/audit.jsonl" not in before
        attempts = [["demo", "--base-port", str(free_base_port(2)), "--state-dir", str(state), "--rounds", "1"],
                    ["launch", "--base-port", str(free_base_port(2)), "--state-dir", str(state)],
                    ["launch", "--data", "idx:/no/such/dir", "--state-dir", str(state)],
                    ["serve", "--data", f"idx:{small_idx}", "--name", "site-1", "--port", str(free_base_port(1)),
                     "--state-dir", str(state)]]
        for argv in attempts:
            rc = main(argv)
            line = error_line(capsys.readouterr().err)
            assert rc == 1, argv
            assert f"{state} is in use by fl-syft launch (PID {launcher.pid}," in line
            assert "stop it first, or choose another --state-dir" in line
        assert snapshot(state) == before
        assert scientist_run(state, small_idx, tmp_path / "run") == 0  # still fully usable
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.communicate(timeout=60)
    assert StateLock(state, "test").acquire()  # released on exit


def plain_options(small_idx: Path, state: Path, sites: int, **more) -> LaunchOptions:
    return LaunchOptions(partition=PartitionSpec(sites=sites), data=f"idx:{small_idx}",
                         base_port=free_base_port(sites), state_dir=state, policy=plain_policy(), **more)


def test_a_failed_start_leaves_a_stopped_deployment_as_it_was(small_idx, tmp_path, capsys):
    state = tmp_path / "state"
    opts = plain_options(small_idx, state, 2)
    with Deployment(opts) as d:
        d.start()
    before = snapshot(state)
    assert "secrets.json" in before and "site-1/identity.json" in before
    with socket.socket() as s:  # a busy port
        s.bind(("127.0.0.1", 0))
        s.listen()
        for argv in (["launch", "--data", "idx:/no/such/dir", "--state-dir", str(state),
                      "--base-port", str(free_base_port(2))],
                     ["launch", "--data", f"idx:{small_idx}", "--state-dir", str(state),
                      "--base-port", str(s.getsockname()[1])]):
            assert main(argv) == 1
            capsys.readouterr()
    assert snapshot(state) == before


def test_a_killed_launcher_leaves_no_lock_behind(small_idx, tmp_path):
    state = tmp_path / "state"
    launcher = start_launcher(small_idx, state, free_base_port(2))
    sites = [p for p in psutil.Process(launcher.pid).children() if "fl_syft.owner.datasite" in " ".join(p.cmdline())]
    launcher.kill()  # SIGKILL: no clean-up at all
    launcher.wait()
    psutil.wait_procs(sites, timeout=30)  # the sites notice and stop
    (state / "datasites.json").unlink()  # left by the killed launcher: wait for the new one's
    again = start_launcher(small_idx, state, free_base_port(2), "--keep")
    again.send_signal(signal.SIGTERM)
    _, err = again.communicate(timeout=60)
    assert f"taking over from fl-syft launch (PID {launcher.pid}" in err


def test_nothing_under_the_state_directory_is_readable_by_others(small_idx, tmp_path, caplog):
    state = tmp_path / "state"
    with Deployment(plain_options(small_idx, state, 1)) as d:
        d.start()
        assert scientist_run(state, small_idx, tmp_path / "run") == 0  # audit log, outputs in the db
        assert loose_entries(state) == []
        assert list(state.glob("site-1/syft/*/db/*"))  # the database holding the rows is among them
    # An older state directory, opened up, is tightened on the next --keep start, and it says so.
    logging.getLogger().addHandler(caplog.handler)  # main() above reset the root logger's handlers
    for path in [state, *state.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    with Deployment(plain_options(small_idx, state, 1, keep=True)) as d:
        d.start()
        assert loose_entries(state) == []
    assert any("owner-only (they were readable by others)" in r.getMessage() for r in caplog.records)


def test_keep_with_new_passwords_changes_the_accounts(small_idx, tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("FL_SYFT_DS_PASSWORD", "old-scientist-pw")
    monkeypatch.setenv("FL_SYFT_ADMIN_PASSWORD", "old-admin-pw")
    opts = plain_options(small_idx, state, 1)
    with Deployment(opts) as d:
        d.start()
    monkeypatch.setenv("FL_SYFT_DS_PASSWORD", "new-scientist-pw")
    monkeypatch.setenv("FL_SYFT_ADMIN_PASSWORD", "new-admin-pw")
    opts.keep, opts.base_port = True, free_base_port(1)
    with Deployment(opts) as d:
        d.start()
        assert json.loads((state / "secrets.json").read_text())["ds_password"] == "new-scientist-pw"
        conn = d.connection_file
        assert login(conn, password="new-scientist-pw").datasets[0].assets[0].mock.shape == (100, 785)
        assert login(conn, email=ADMIN_EMAIL, password="new-admin-pw")
        from syft.types.errors import SyftException

        for email, old in (("scientist@fl-syft.example.com", "old-scientist-pw"), (ADMIN_EMAIL, "old-admin-pw")):
            with pytest.raises(SyftException):
                login(conn, email=email, password=old)


def test_the_lock_names_its_holder_and_frees_on_exit(tmp_path):
    with StateLock(tmp_path, "fl-syft launch"):
        with pytest.raises(StateLocked, match=rf"{tmp_path} is in use by fl-syft launch \(PID {os.getpid()},"):
            StateLock(tmp_path, "fl-syft demo").acquire()
    StateLock(tmp_path, "fl-syft demo").acquire().release()
