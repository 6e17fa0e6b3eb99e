"""Datasite state in a real PostgreSQL server that this test starts (--db-url)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import plain_policy

from fl_syft.cli import main
from fl_syft.common.partition import PartitionSpec
from fl_syft.owner.launch import Deployment, LaunchOptions
from fl_syft.owner.network import free_base_port

pytestmark = pytest.mark.syft


def _pg_bin(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on a free loopback port; yields its base URL."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries missing: .ci/run should install Debian's postgresql")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    data = Path(tempfile.mkdtemp(prefix="fl-syft-pg-"))  # pytest's own tmp is private to root
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_base_port(1)
    subprocess.run([*as_user, initdb, "-D", str(data / "db"), "-U", "fl", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data / "db"), "-w", "-l", str(data / "db" / "log"),
                    "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://fl:unused@127.0.0.1:{port}/fl_syft"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data / "db"), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_postgres_state_survives_a_restart(postgres, small_idx, tmp_path):
    import psycopg

    opts = LaunchOptions(partition=PartitionSpec(sites=1), data=f"idx:{small_idx}", base_port=free_base_port(1),
                         state_dir=tmp_path / "state", db_url=postgres, policy=plain_policy())
    run = ["run", "--connection", str(tmp_path / "state" / "datasites.json"), "--data", f"idx:{small_idx}",
           "--rounds", "1", "--local-iters", "2"]
    with Deployment(opts) as d:
        assert d.start()[0]["rows"] == 3000
        assert main([*run, "--out", str(tmp_path / "a")]) == 0
        assert d.restart("site-1")["rows"] == 3000  # dataset and accounts read back from PostgreSQL
        assert main([*run, "--out", str(tmp_path / "b")]) == 0
    with psycopg.connect(postgres.replace("/fl_syft", "/fl_syft_site_1")) as db:
        tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "User" in tables or any("user" in t.lower() for t in tables)


def test_unreachable_postgres_is_one_line(small_idx, tmp_path, capsys):
    port = free_base_port(1)
    rc = main(["launch", "--data", f"idx:{small_idx}", "--base-port", str(free_base_port(1)),
               "--state-dir", str(tmp_path), "--db-url", f"postgresql://u:p@127.0.0.1:{port}/x"])
    err = capsys.readouterr().err
    assert rc == 1 and f"PostgreSQL at 127.0.0.1:{port}:" in err and "check --db-url" in err
