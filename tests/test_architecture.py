"""The layout shows the trust boundary, and a test keeps it that way (reads the imports, runs nothing).

owner/ (data owner's machine) and scientist/ (data scientist's machine) never import each
other; vetted/ (shipped as source into a datasite) imports nothing from the project and
nothing at module level; common/ imports only common/; simulate.py (every owner and the
scientist in one process) uses of the scientist's side only what a site's answers meet.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from fl_syft.common.protocol import schema
from fl_syft.owner.approval import vetted_functions
from fl_syft.scientist.algorithms import REGISTRY

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


@pytest.mark.parametrize("features", [None, "pixels"], ids=["default-features", "pixels"])
@pytest.mark.parametrize("name", sorted(vetted_functions()))
def test_every_vetted_function_runs_from_its_source_alone(name, features):
    """PySyft ships the source: it must define a working function with no module globals."""
    from conftest import synthetic_shard, vetted_data, width

    namespace: dict = {}
    exec(compile(inspect.getsource(vetted_functions()[name]), "<shipped>", "exec"), namespace)
    fn = namespace[name]
    config = schema(name, dp=False).complete({**({"local_iters": 2} if name == "ml_experiment" else {}),
                                              **({"features": features} if features else {})})
    params = {"coef": [[0.0] * width(config["features"])] * 10, "intercept": [0.0] * 10}
    assert isinstance(fn(vetted_data(synthetic_shard(100), config["features"]), params, config), dict)


def test_every_function_an_algorithm_submits_is_one_the_owner_approves():
    approved = vetted_functions()
    for cls in REGISTRY.values():
        for fn in cls.functions:
            assert approved[fn.__name__] is fn, (cls.name, fn.__name__)



# What the simulation may use of the scientist's side: the Site contract, scoring and the baselines'
# constants. Anything else would be scientist code run on the pooled rows a real run never has.
SIMULATE_MAY_USE = {"fl_syft.scientist.rounds", "fl_syft.scientist.evaluate", "fl_syft.scientist.baselines"}


def test_the_simulation_plays_the_owners_and_hands_the_scientist_only_what_sites_answer():
    names = imported_modules(PACKAGE / "simulate.py")
    scientist = {n.rsplit(".", 1)[0] if n.count(".") > 2 else n for n in names if n.startswith("fl_syft.scientist")}
    assert scientist <= SIMULATE_MAY_USE, scientist - SIMULATE_MAY_USE
    assert not [n for n in names if n == "fl_syft.cli" or n.startswith("fl_syft.cli.")]
    importers = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if p.name != "cli.py"
                 and any(n == "fl_syft.simulate" or n.startswith("fl_syft.simulate.") for n in imported_modules(p))]
    assert importers == []  # only the command line runs a simulation


def test_the_run_takes_no_rows():
    """The scientist's run gets what only a simulation can compute as results (the ceiling for its
    C, the partition's label counts), never the shards themselves."""
    from fl_syft.scientist import runs

    for fn in (runs.run, runs.resume, runs.run_over, runs.resume_over):
        assert not {"pooled", "shards", "rows", "data_rows"} & set(inspect.signature(fn).parameters), fn.__name__
