"""The approver's decision table and the fingerprint rules, as pure functions (no datasite)."""

from __future__ import annotations

import inspect
import textwrap

import pytest

from fl_syft.common.fingerprint import fingerprint
from fl_syft.owner.approval import allow_list, decide
from fl_syft.vetted.local_training import ml_experiment

SOURCE = textwrap.dedent(inspect.getsource(ml_experiment))


def judged(name: str = "ml_experiment", source: str = SOURCE):
    return decide(name, source, allow_list())


def test_the_vetted_function_on_this_sites_asset_is_approved():
    decision = judged()
    assert decision.approve and decision.reason.startswith("approved")
    assert decision.fingerprint == fingerprint(SOURCE)


# The request-level rules (one change, PySyft's own policies, this site's asset) need PySyft
# objects: tests/test_hostile_requests.py submits such requests to real datasites.
@pytest.mark.parametrize("name, source, reason", [
    ("ml_experiment", SOURCE.replace("clip / np.maximum", "1e6 * clip / np.maximum"),  # a looser clip
     "differs from the vetted fl_syft version (submit fl_syft.vetted.local_training.ml_experiment unchanged)"),
    ("train", SOURCE.replace("def ml_experiment(", "def train("), "'train' is not on this site's allow-list"),
    ("ml_experiment", SOURCE + "\ndef helper():\n    pass\n", "not a single function definition"),
    ("ml_experiment", "def ml_experiment(:", "not a single function definition"),
])
def test_everything_else_is_denied_with_a_reason(name, source, reason):
    decision = judged(name, source)
    assert not decision.approve and decision.reason.startswith("denied:")
    assert reason in decision.reason


def test_fingerprint_ignores_comments_formatting_and_decorators():
    reformatted = SOURCE.replace("        started = time.perf_counter()\n",
                                 "        # a comment\n        started = (time.perf_counter())  # another\n")
    decorated = "@some.decorator(policy=1)\n" + SOURCE
    assert fingerprint(reformatted) == fingerprint(decorated) == fingerprint(SOURCE)
    assert judged(source=reformatted).approve


def test_fingerprint_counts_the_docstring_and_every_statement():
    docstring = SOURCE.replace("One local round", "One local round (edited)")
    statement = SOURCE.replace("        started = time.perf_counter()\n",
                               "        started = time.perf_counter()\n        pass\n")
    assert len({fingerprint(SOURCE), fingerprint(docstring), fingerprint(statement)}) == 3
    assert not judged(source=docstring).approve
