"""Hostile code requests against real datasites: every one denied, audited, approver alive."""

from __future__ import annotations

import inspect
import json
import textwrap
import time

import pytest
from syft_helpers import audit, function_from_source, login, new_scientist, running_deployment, submit

from fl_syft.common.features import DEFAULT, MAPS
from fl_syft.owner.launch import ADMIN_EMAIL
from fl_syft.scientist.addresses import ds_password, read_connection
from fl_syft.scientist.connect import connect
from fl_syft.vetted.local_training import ml_experiment

pytestmark = pytest.mark.syft
VETTED_SOURCE = textwrap.dedent(inspect.getsource(ml_experiment))


@pytest.fixture(scope="module")
def deployment(small_idx, tmp_path_factory):
    yield from running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("state"))


def changed(old: str, new: str) -> str:
    assert old in VETTED_SOURCE
    return VETTED_SOURCE.replace(old, new, 1)


def leak(data):
    return data


def test_hostile_requests_are_all_denied(deployment, tmp_path):
    tried: dict[str, str] = {}  # case -> how it ended

    def attempt(case: str, client, fn, asset=None, **plain) -> None:
        try:
            submit(client, fn, asset, **plain)
            tried[case] = "submitted"
        except Exception as e:  # PySyft refused it before the approver saw it: also not approved
            tried[case] = f"refused at submission: {type(e).__name__}"

    attempt("returns its data", new_scientist(deployment, "h1"), leak)
    one_line = function_from_source(changed('warm_start=True', 'warm_start=False'), "ml_experiment", tmp_path)
    attempt("ml_experiment with one changed line", new_scientist(deployment, "h2"), one_line,
            global_params=dict, config=dict)
    body = function_from_source("def ml_experiment(data, global_params, config):\n    return {'coef': data}\n",
                                "ml_experiment", tmp_path)
    attempt("vetted name, different body", new_scientist(deployment, "h3"), body, global_params=dict, config=dict)
    other_asset = login(deployment.connection_file, 1).datasets[0].assets[0]
    attempt("vetted function on another site's asset", new_scientist(deployment, "h4"), ml_experiment,
            asset=other_asset, global_params=dict, config=dict)
    attempt("vetted function with an extra argument", new_scientist(deployment, "h5"), ml_experiment,
            global_params=dict, config=dict, extra=dict)
    attempt("vetted function with config as a list", new_scientist(deployment, "h6"), ml_experiment,
            global_params=dict, config=list)
    burst = new_scientist(deployment, "h7")
    burst_asset = burst.datasets[0].assets[0]
    started = time.monotonic()
    for i in range(100):
        fn = function_from_source(f"def leak_{i}(data):\n    return data[:{i + 1}]\n", f"leak_{i}", tmp_path)
        attempt(f"burst {i}", burst, fn, asset=burst_asset)
    print(f"\n100 requests submitted in {time.monotonic() - started:.1f} s")

    emails = [f"h{i}@example.com" for i in range(1, 8)]
    requests = _decided_requests(deployment, emails)
    approved = [r for r in requests if "APPROVED" in str(r.status)]
    print(f"\nhostile requests tried: {len(tried)}, reached the approver: {len(requests)}, "
          f"approved: {len(approved)}")
    assert len(tried) >= 100
    assert approved == []
    denied = [e for e in audit(deployment.connection_file) if e["requester"] in emails]
    assert len(denied) == len(requests) and all(e["decision"] == "denied" for e in denied)
    assert sum(1 for e in denied if e["function"].startswith("leak_")) == 100

    # The approver is still alive and still approves the real thing.
    conn = deployment.connection_file
    sites = connect(read_connection(conn), ds_password(conn), (ml_experiment,), approval_timeout=30)
    assert sites[0].call("ml_experiment", {}, {"local_iters": 2})["coef"].shape == (10, MAPS[DEFAULT].width)


def _decided_requests(deployment, emails: list[str], timeout: float = 120.0) -> list:
    """All requests on site-1 from ``emails``, once none is pending."""
    secrets = json.loads((deployment.state / "secrets.json").read_text())
    admin = login(deployment.connection_file, 0, email=ADMIN_EMAIL, password=secrets["admin_password"])
    deadline = time.monotonic() + timeout
    while True:
        mine = [r for r in admin.requests.get_all() if r.requesting_user_email in emails]
        if all("PENDING" not in str(r.status) for r in mine) or time.monotonic() > deadline:
            return mine
        time.sleep(0.5)
