"""The approver's decision table and the fingerprint rules, as pure functions (no datasite)."""

from __future__ import annotations

import inspect
import textwrap

import pytest

from fl_syft.common.fingerprint import fingerprint
from fl_syft.owner.approval import allow_list, decide
from fl_syft.vetted.local_training import ml_experiment

SOURCE = textwrap.dedent(inspect.getsource(ml_experiment))
ASSET = "asset-of-this-site"
INPUTS = {"data": ("asset", ASSET), "global_params": ("plain", "dict"), "config": ("plain", "dict")}


def judged(name: str = "ml_experiment", source: str = SOURCE, inputs: dict = INPUTS):
    return decide(name, source, inputs, ASSET, allow_list())


def test_the_vetted_function_on_this_sites_asset_is_approved():
    decision = judged()
    assert decision.approve and decision.reason.startswith("approved")
    assert decision.fingerprint == fingerprint(SOURCE)


@pytest.mark.parametrize("name, source, inputs, reason", [
    ("ml_experiment", SOURCE.replace('"local_iters": 20', '"local_iters": 2000'), INPUTS,
     "differs from the vetted fl_syft version (submit fl_syft.vetted.local_training.ml_experiment unchanged)"),
    ("train", SOURCE.replace("def ml_experiment(", "def train("), INPUTS, "'train' is not on this site's allow-list"),
    ("ml_experiment", SOURCE, {**INPUTS, "extra": ("plain", "dict")}, "inputs must be data=<this site's asset>"),
    ("ml_experiment", SOURCE, {**INPUTS, "data": ("asset", "another-site")}, "inputs must be data=<this site's asset>"),
    ("ml_experiment", SOURCE, {**INPUTS, "config": ("plain", "list")}, "got config=plain, data=asset"),
    ("ml_experiment", SOURCE, {**INPUTS, "<policy>": ("other", "CustomInputPolicy")}, "inputs must be"),
    ("ml_experiment", SOURCE + "\ndef helper():\n    pass\n", INPUTS, "not a single function definition"),
    ("ml_experiment", "def ml_experiment(:", INPUTS, "not a single function definition"),
])
def test_everything_else_is_denied_with_a_reason(name, source, inputs, reason):
    decision = judged(name, source, inputs)
    assert not decision.approve and decision.reason.startswith("denied:")
    assert reason in decision.reason


def test_fingerprint_ignores_comments_formatting_and_decorators():
    reformatted = SOURCE.replace("    started = time.perf_counter()\n",
                                 "    # a comment\n    started = (time.perf_counter())  # another\n")
    decorated = "@some.decorator(policy=1)\n" + SOURCE
    assert fingerprint(reformatted) == fingerprint(decorated) == fingerprint(SOURCE)
    assert judged(source=reformatted).approve


def test_fingerprint_counts_the_docstring_and_every_statement():
    docstring = SOURCE.replace("One local round", "One local round (edited)")
    statement = SOURCE.replace("    started = time.perf_counter()\n",
                               "    started = time.perf_counter()\n    config = dict(config)\n")
    assert len({fingerprint(SOURCE), fingerprint(docstring), fingerprint(statement)}) == 3
    assert not judged(source=docstring).approve
