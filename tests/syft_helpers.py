"""Helpers for tests that act as a plain PySyft user against real datasites."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

import syft as sy


def login(connection: Path, index: int = 0, email: str | None = None, password: str | None = None):
    site = json.loads(connection.read_text())["datasites"][index]
    secrets = json.loads((connection.parent / "secrets.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        return sy.login(url=site["url"], port=site["port"], email=email or site["ds_email"],
                        password=password or secrets["ds_password"])


def submit(client, fn, asset=None, **plain_args) -> None:
    """Submit ``fn(data=<asset, default the site's own>, **plain_args)`` as a code request."""
    asset = asset or client.datasets[0].assets[0]
    policy = sy.MixedInputPolicy(client=client, data=asset, **plain_args)
    with contextlib.redirect_stdout(io.StringIO()):
        client.code.request_code_execution(sy.syft_function(input_policy=policy)(fn))


def wait_decision(client, func_name: str, timeout: float = 30.0):
    """The newest request for ``func_name`` once it is no longer pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [r for r in client.requests.get_all() if r.code.service_func_name == func_name]
        if mine and "PENDING" not in str(mine[-1].status):
            return mine[-1]
        time.sleep(0.1)
    raise AssertionError(f"no decision on {func_name} within {timeout} s")


def function_from_source(source: str, name: str, folder: Path):
    """Define ``name`` from ``source`` in a real module file (PySyft reads the source back)."""
    import importlib.util

    path = folder / f"mod_{abs(hash(source))}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # inspect finds a class's source through its module
    spec.loader.exec_module(module)
    return getattr(module, name)


def audit(connection: Path, site: str = "site-1", event: str = "decision") -> list[dict]:
    """The site's audit log entries of one kind ("decision": the approver's; "charged"/"refused": the guard's)."""
    path = connection.parent / site / "audit.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("event") == event]


def run_notebook(env: dict[str, str]):
    """Execute the notebook top to bottom with ``env`` set (restored after); the executed notebook."""
    import os

    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[1]
    nb = nbformat.read(root / "notebooks" / "federated_mnist.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store without outputs"
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(root / "notebooks")}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return nb


def running_deployment(data: str, state: Path, sites: int = 2, policy: dict | None = None):
    """A started Deployment of ``sites`` IID sites on free loopback ports (a generator for fixtures);
    ``policy`` default: conftest.plain_policy() (no DP)."""
    from conftest import plain_policy

    from fl_syft.common.partition import PartitionSpec
    from fl_syft.owner.launch import Deployment, LaunchOptions
    from fl_syft.owner.network import free_base_port

    opts = LaunchOptions(partition=PartitionSpec(sites=sites), data=data, base_port=free_base_port(sites),
                         state_dir=state, policy=policy or plain_policy())
    with Deployment(opts) as d:
        d.table = d.start()
        yield d


def new_scientist(deployment, name: str, index: int = 0):
    """A fresh data-scientist account on every site, logged in to site ``index`` (PySyft refuses
    the same code twice from one user, so each attack gets its own)."""
    from fl_syft.owner.launch import ADMIN_EMAIL

    secrets = json.loads((deployment.state / "secrets.json").read_text())
    email = f"{name}@example.com"
    for i in range(len(deployment.specs)):
        admin = login(deployment.connection_file, i, email=ADMIN_EMAIL, password=secrets["admin_password"])
        with contextlib.redirect_stdout(io.StringIO()):
            admin.users.create(name=name, email=email, password="hostile-pw-1", password_verify="hostile-pw-1")
    return login(deployment.connection_file, index, email=email, password="hostile-pw-1")

