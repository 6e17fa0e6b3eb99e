"""The layout shows the trust boundary, and a test keeps it that way (reads the imports, runs nothing).

owner/ (data owner's machine) and scientist/ (data scientist's machine) never import each
other; vetted/ (shipped as source into a datasite) imports nothing from the project and
nothing at module level; common/ imports only common/.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from fl_syft.owner.approval import vetted_functions
from fl_syft.scientist.algorithms import REGISTRY
from fl_syft.scientist.algorithms.fedavg import PLAIN_DEFAULTS, PRIVATE_DEFAULTS, FedAvgSettings
from fl_syft.vetted.local_training import ml_experiment

PACKAGE = Path(__file__).resolve().parents[1] / "fl_syft"
FORBIDDEN = {
    "owner": ("fl_syft.scientist", "fl_syft.simulate", "fl_syft.cli"),
    "scientist": ("fl_syft.owner", "fl_syft.simulate", "fl_syft.cli"),
    "vetted": ("fl_syft",),
    "common": ("fl_syft.owner", "fl_syft.scientist", "fl_syft.vetted", "fl_syft.simulate", "fl_syft.cli"),
}


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """Every module an ``import`` in ``path`` names (relative imports resolved), wherever it sits."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return found


def test_the_import_reader_sees_through_relative_and_nested_imports(tmp_path):
    """Otherwise the rules below would prove nothing."""
    module = tmp_path / "fl_syft" / "owner" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("from ..scientist import rounds\ndef f():\n    import fl_syft.scientist.report\n")
    assert {"fl_syft.scientist.rounds", "fl_syft.scientist.report"} <= set(imported_modules(module, tmp_path))


@pytest.mark.parametrize("side", sorted(FORBIDDEN))
def test_each_side_imports_only_what_it_may(side):
    files = sorted((PACKAGE / side).rglob("*.py"))
    assert files
    bad = [f"{path.relative_to(PACKAGE)} imports {name}"
           for path in files for name in imported_modules(path)
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[side])]
    assert bad == []


def test_vetted_modules_import_nothing_at_module_level():
    for path in (PACKAGE / "vetted").glob("*.py"):
        tree = ast.parse(path.read_text())
        assert not [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)], path.name


@pytest.mark.parametrize("name", sorted(vetted_functions()))
def test_every_vetted_function_runs_from_its_source_alone(name):
    """PySyft ships the source: it must define a working function with no module globals."""
    from conftest import synthetic_shard

    namespace: dict = {}
    exec(compile(inspect.getsource(vetted_functions()[name]), "<shipped>", "exec"), namespace)
    fn = namespace[name]
    params = {"coef": [[0.0] * 784] * 10, "intercept": [0.0] * 10}
    config = {"local_iters": 2} if name == "ml_experiment" else {}
    assert isinstance(fn(synthetic_shard(100), params, config), dict)


def test_every_function_an_algorithm_submits_is_one_the_owner_approves():
    approved = vetted_functions()
    for cls in REGISTRY.values():
        for fn in cls.functions:
            assert approved[fn.__name__] is fn, (cls.name, fn.__name__)


def test_fedavg_defaults_equal_the_vetted_function_defaults():
    """The scientist's defaults and the ones ml_experiment applies to a missing key must agree,
    without DP and under DP."""
    tree = ast.parse(inspect.getsource(ml_experiment))
    literal = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.walk(tree)
               if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in ("defaults", "dp_defaults")}
    assert {k: v for k, v in PLAIN_DEFAULTS.items() if k != "rounds"} == literal["defaults"]
    assert {k: v for k, v in PRIVATE_DEFAULTS.items() if k != "rounds"} == {
        k: v for k, v in literal["dp_defaults"].items() if v is not None and k != "l2"}
    plain, private = FedAvgSettings().resolved(private=False), FedAvgSettings().resolved(private=True)
    assert all(getattr(plain, k) == v for k, v in PLAIN_DEFAULTS.items())
    assert all(getattr(private, k) == v for k, v in PRIVATE_DEFAULTS.items())
