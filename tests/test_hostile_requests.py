"""A malicious scientist against real DP datasites, beyond the code it asks to run.

Each test is one kind of break: what PySyft would run or apply for a request besides the
vetted function, what the scientist's account reaches without any request, and what a
call's outcome could say about the rows besides the accounted noise. Each uses only a plain
PySyft client and the scientist's account (or no account), and checks what matters to the
data owner: nothing ran, nothing was granted, nothing about the rows came out.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
import syft as sy
from syft_helpers import audit, function_from_source, login, new_scientist, running_deployment, wait_decision

from fl_syft.common.features import MAPS
from fl_syft.common.protocol import Refusal
from fl_syft.owner.policy import owner_policy
from fl_syft.vetted.local_training import ml_experiment

pytestmark = pytest.mark.syft
DP_CALL = {"local_steps": 1, "lr": 1.0, "momentum": 0.0, "noise_multiplier": 1e6}  # costs ~nothing
ROWS = 1500  # each of the two sites' shard of the 3000-row test set


@pytest.fixture(scope="module")
def deployment(small_idx, tmp_path_factory):
    yield from running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("hostile"),
                                  policy=owner_policy(min_rows=10))


def request_vetted(client, output_policy=None, **tamper) -> None:
    """Ask for ml_experiment on this site's asset; ``tamper``: fields of PySyft's submission set by hand."""
    asset = client.datasets[0].assets[0]
    policy = sy.MixedInputPolicy(client=client, data=asset, global_params=dict, config=dict)
    extra = {} if output_policy is None else {"output_policy": output_policy}
    submission = sy.syft_function(input_policy=policy, **extra)(ml_experiment)
    for field, value in tamper.items():
        setattr(submission, field, value)
    with contextlib.redirect_stdout(io.StringIO()):
        client.code.request_code_execution(submission)


def call_outcome(client, **kwargs) -> str:
    """A call of ml_experiment as the scientist sees its outcome."""
    asset = client.datasets[0].assets[0]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            client.code.ml_experiment(data=asset, global_params={}, config=DP_CALL, **kwargs).get()
        return "ran"
    except Exception as e:
        return " ".join(str(e).split())


SPY_POLICY = '''
import syft as sy


class Spy(sy.CustomOutputPolicy):
    if __import__("os").getpid() != {pid}:  # not where the attacker defines it: in the site
        open({marker!r}, "w").write("this class body ran inside the datasite")

    def __init__(self):
        pass

    def apply_to_output(self, context, outputs, update_policy=True):
        return outputs
'''


def test_a_custom_output_policy_is_denied_and_never_runs(deployment, tmp_path):
    """Break 1: the vetted function with a custom output policy was approved, and PySyft exec()s
    the policy's class body inside the site on the call."""
    marker = tmp_path / "policy-ran"
    client = new_scientist(deployment, "policy")
    spy = function_from_source(SPY_POLICY.format(marker=str(marker), pid=os.getpid()), "Spy", tmp_path)
    request_vetted(client, output_policy=spy())
    assert "REJECTED" in str(wait_decision(client, "ml_experiment").status)
    assert call_outcome(client) != "ran"
    assert not marker.exists()
    decision = [e for e in audit(deployment.connection_file) if e["requester"] == "policy@example.com"][-1]
    assert decision["decision"] == "denied" and "output policy" in decision["reason"]


def test_code_injected_beside_the_fingerprinted_source_never_runs(deployment, tmp_path):
    """PySyft writes the submission's ``input_kwargs`` into the code it executes (``parsed_code``),
    which no fingerprint of the source covers: the function's text stays the vetted one."""
    marker = tmp_path / "injected-ran"
    inject = f"config=config, _=__import__('pathlib').Path({str(marker)!r}).write_text('ran')) #"
    client = new_scientist(deployment, "inject")
    request_vetted(client, input_kwargs=["data", "global_params", inject])
    request = wait_decision(client, "ml_experiment")
    call_outcome(client)
    assert not marker.exists()
    assert "REJECTED" in str(request.status)


def test_a_hand_built_request_grants_nothing(deployment):
    """``request.submit`` takes any list of changes, and approving applies each: here the vetted
    code's approval plus read permission on the private asset."""
    from syft.service.action.action_object import ActionObject
    from syft.service.action.action_permissions import ActionPermission
    from syft.service.action.action_service import ActionService
    from syft.service.request.request import ActionStoreChange, SubmitRequest
    from syft.store.linked_obj import LinkedObject

    client = new_scientist(deployment, "handbuilt")
    request_vetted(client)
    approval = wait_decision(client, "ml_experiment").changes[0]
    asset = client.datasets[0].assets[0]
    grant = ActionStoreChange(linked_obj=LinkedObject.from_uid(asset.action_id, ActionObject, ActionService, client.id),
                              apply_permission_type=ActionPermission.READ)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            client.api.services.request.submit(SubmitRequest(changes=[approval, grant]))
    except Exception as e:
        assert "request.submit is not open to data scientists" in str(e)
    import time

    time.sleep(2)  # the approver polls every 0.1 s
    assert login(deployment.connection_file, email="handbuilt@example.com", password="hostile-pw-1"
                 ).datasets[0].assets[0].data is None


def test_pointer_actions_on_the_private_rows_are_refused_alike(deployment):
    """``action.execute`` runs methods on the private twin without any request: an error/success
    oracle read the row count (and, the same way, any pixel)."""
    from syft.service.action.action_object import Action, ActionObject, ActionType
    from syft.types.uid import LineageID

    client = new_scientist(deployment, "pointer")
    asset = client.datasets[0].assets[0]

    def execute(op: str, target, args=(), kind=ActionType.METHOD):
        with contextlib.redirect_stdout(io.StringIO()):
            return client.api.services.action.execute(Action(
                path="numpy.ndarray", op=op, remote_self=LineageID(target), args=[LineageID(a) for a in args],
                kwargs={}, action_type=kind))

    def probe(length: int) -> str:
        """list(range(length))[rows] fails exactly when the site holds ``length`` rows or more."""
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                zero = ActionObject.from_obj(0).send(client)
                items = ActionObject.from_obj(list(range(length))).send(client)
            shape = execute("shape", asset.action_id, kind=ActionType.GETATTRIBUTE)
            rows = execute("__getitem__", shape.id.id, [zero.id.id])
            execute("__getitem__", items.id.id, [rows.id.id])
            return "ran"
        except Exception as e:
            return " ".join(str(e).split())

    outcomes = {probe(ROWS), probe(ROWS + 1)}
    assert len(outcomes) == 1, outcomes
    assert "action.execute is not open to data scientists" in outcomes.pop()


def test_a_guest_without_an_account_reaches_nothing(deployment):
    site = json.loads(deployment.connection_file.read_text())["datasites"][0]
    with contextlib.redirect_stdout(io.StringIO()):
        guest = sy.login_as_guest(url=site["url"], port=site["port"])
    with pytest.raises(Exception, match="log in with an account of this site"):
        guest.api.services.dataset.get_all()


def test_what_a_scientist_reads_without_a_call_says_nothing_of_the_row_count(deployment):
    """The site publishes its row count only with noise; PySyft records the data's size in MB and
    the description used to state the count."""
    dataset = login(deployment.connection_file).datasets[0]
    assert dataset.mb_size is None
    assert str(ROWS) not in str(dataset.description)
    assert dataset.assets[0].shape == (100, 785)  # the mock's


def test_models_past_the_published_bound_are_refused_before_any_row_is_touched(deployment):
    """Break 2: entries beyond float32's range made every logit of chosen rows -inf, so the whole
    returned model was NaN exactly when one row met chosen conditions, whatever the noise."""
    client = new_scientist(deployment, "overflow")
    request_vetted(client)
    wait_decision(client, "ml_experiment")
    asset = client.datasets[0].assets[0]
    for features in ("scattering", "pixels"):  # the default map (unset), and pixels
        config = DP_CALL if features == "scattering" else {**DP_CALL, "features": features}
        width = MAPS[features].width
        before = client.api.services.api.call("fl_syft.privacy")["epsilon_spent"]
        huge = {"coef": np.full((10, width), 1e39), "intercept": np.zeros(10)}
        with pytest.raises(Exception, match=r"within \+-10000") as refused:
            with contextlib.redirect_stdout(io.StringIO()):
                client.code.ml_experiment(data=asset, global_params=huge, config=config).get()
        assert Refusal.find(str(refused.value)) == Refusal(  # the refusal, read back out of PySyft's error text
            "site-1", "ml_experiment", "global_params coef must be a numpy array of finite numbers within +-10000, "
                                       f"shape (10, {width})")
        assert client.api.services.api.call("fl_syft.privacy")["epsilon_spent"] == before
        edge = {"coef": np.where(np.arange(width) % 2, 1e4, -1e4) * np.where(np.arange(10) % 2, 1, -1)[:, None],
                "intercept": np.full(10, -1e4)}
        with contextlib.redirect_stdout(io.StringIO()):
            result = client.code.ml_experiment(data=asset, global_params=edge, config=config).get()
        assert all(np.all(np.isfinite(np.asarray(result[k]))) for k in ("coef", "intercept"))
        assert np.shape(result["coef"]) == (10, width)


@pytest.fixture(scope="module")
def small_quota(small_idx, tmp_path_factory):
    yield from running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("quota"), sites=1,
                                  policy=owner_policy(min_rows=10, storage_quota_mb=1.0))


def test_uploads_beyond_the_accounts_quota_are_refused(small_quota):
    """Every upload is kept by PySyft: without a bound, one account fills the owner's disk."""
    from syft.service.action.action_object import ActionObject

    client = login(small_quota.connection_file)
    with contextlib.redirect_stdout(io.StringIO()):
        noise = np.random.default_rng(0).random  # incompressible: PySyft compresses what it sends
        ActionObject.from_obj(noise(1000)).send(client)  # 8 kB: within the quota
        with pytest.raises(Exception, match=r"storage quota on the site \(1 MiB\) is used up"):
            ActionObject.from_obj(noise(200_000)).send(client)  # 1.6 MB



def test_a_request_body_cannot_make_the_deserialiser_call_a_function(deployment, tmp_path):
    """Before the caller is known, PySyft rebuilt a typing alias by calling whatever function the
    body named with the body's fields: here ``subprocess.run`` from an unauthenticated POST."""
    import typing

    import requests
    from syft.serde.serialize import _serialize
    from syft.types.syft_object_registry import SyftObjectRegistry

    marker = tmp_path / "deserialiser-ran"
    crafted = {"path": "subprocess.run", "args": f"touch {marker}", "shell": True}
    registry = SyftObjectRegistry.__object_serialization_registry__["_GenericAlias"]
    honest = dict(registry)
    try:  # the attacker's own serialiser for a typing alias writes the crafted fields instead
        for version, entry in registry.items():
            registry[version] = (entry[0], lambda alias: _serialize(crafted, to_bytes=True), *entry[2:])
        body = sy.serialize(typing.List[int], to_bytes=True)  # noqa: UP006 (typing's alias, not list[int])
    finally:
        registry.update(honest)
    site = json.loads(deployment.connection_file.read_text())["datasites"][0]
    requests.post(f"{site['url']}:{site['port']}/api/v2/api_call", data=body, timeout=30)
    assert not marker.exists()
    # and the site still serves
    assert login(deployment.connection_file).datasets[0].assets[0].shape == (100, 785)


def test_a_signed_answer_cannot_carry_a_call_of_ones_own(deployment):
    """PySyft's signed call reads its message from a cached field when one is sent, while the
    signature covers other bytes: any answer the site signed (with its root key) plus a call of
    one's own in that field ran as the site's admin, without an account."""
    import requests
    from syft.client.api import SignedSyftAPICall, SyftAPICall
    from syft.server.credentials import SyftSigningKey
    from syft.types.syft_object_registry import SyftObjectRegistry
    from syft.types.uid import UID

    site = json.loads(deployment.connection_file.read_text())["datasites"][0]
    base = f"{site['url']}:{site['port']}/api/v2"
    server = UID(requests.get(f"{base}/metadata", timeout=30).json()["id"])
    stranger = SyftAPICall(server_uid=server, path="metadata", args=[], kwargs={}).sign(SyftSigningKey.generate())
    signed_by_site = sy.deserialize(requests.post(f"{base}/api_call", data=sy.serialize(stranger, to_bytes=True),
                                                  timeout=30).content, from_bytes=True)
    call = SyftAPICall(server_uid=server, path="user.get_all", args=[], kwargs={}, blocking=True)
    forged = SignedSyftAPICall(credentials=signed_by_site.credentials, signature=signed_by_site.signature,
                               serialized_message=signed_by_site.serialized_message, cached_deseralized_message=call)
    registry = SyftObjectRegistry.__object_serialization_registry__["SignedSyftAPICall"]
    honest = dict(registry)
    try:  # the attacker's serialiser also writes the cached field
        for version, entry in registry.items():
            registry[version] = (*entry[:3], [*entry[3], "cached_deseralized_message"], *entry[4:])
        body = sy.serialize(forged, to_bytes=True)
    finally:
        registry.update(honest)
    answer = sy.deserialize(requests.post(f"{base}/api_call", data=body, timeout=30).content, from_bytes=True)
    assert "a signed call must carry an API call" in str(answer.message.data)


def test_a_call_cannot_choose_where_its_result_is_written_and_refusals_are_answers(deployment):
    """``code.call`` takes a ``result_id``: PySyft then writes the result over that object (the
    asset's id, say), after the call was charged. And a refused path is an answer, not an HTTP 500."""
    from syft.client.api import SyftAPICall

    client = new_scientist(deployment, "resultid")
    request_vetted(client)
    code = wait_decision(client, "ml_experiment").code
    asset_id = client.datasets[0].assets[0].action_id
    before = client.api.services.api.call("fl_syft.privacy")["epsilon_spent"]

    def raw(path: str, **kwargs) -> str:
        """The site's answer to a call built by hand, as text (PySyft's client returns errors as values)."""
        try:
            return str(client.api.make_call(SyftAPICall(server_uid=client.api.server_uid, path=path, args=[],
                                                        kwargs=kwargs, blocking=True)))
        except Exception as e:
            return str(e)

    assert "no result_id" in raw("code.call", uid=code.id, data=asset_id, global_params={}, config=DP_CALL,
                                 result_id=asset_id)
    assert client.api.services.api.call("fl_syft.privacy")["epsilon_spent"] == before
    assert "settings.get is not open to data scientists" in raw("settings.get")
