"""Command line: ``fl-syft simulate|launch|serve|status|run|demo|score|scenarios`` (also ``python -m fl_syft``).

Commands and exit codes only (the flags are ``fl_syft.flags``); the work is in ``owner`` (launch,
serve), ``scientist`` (runs: one run request, run and resume) and ``simulate``. Every error is one
line: a :class:`~fl_syft.common.errors.FlSyftError` with its settings shown as flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import logging
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from fl_syft.cli_owner import cmd_launch, cmd_serve, cmd_status, launch_options
from fl_syft.common.errors import ConfigError, DataError, FlSyftError
from fl_syft.common.partition import SCENARIO_HELP, SCENARIOS
from fl_syft.common.policy import DEFAULT_DELTA, DEFAULT_EPSILON
from fl_syft.flags import (
    DEFAULT_CONNECTION,
    Parser,
    add_algorithm_args,
    add_connect_args,
    add_owner_args,
    add_partition_args,
    add_policy_args,
    add_resilience_args,
    add_site_args,
    braced,
    data_source,
    given_settings,
    owner_policy_from,
    partition_spec,
    resilience,
    run_request,
)
from fl_syft.scientist.runs import RunRequest

log = logging.getLogger("fl_syft")

__all__ = ["build_parser", "main", "partition_spec"]


def build_parser(scenario: str | None = None) -> argparse.ArgumentParser:
    """The CLI; with ``scenario``, its preset becomes the partition flags' defaults."""
    parser = Parser(prog="fl-syft", description="Federated logistic regression on MNIST over PySyft.")
    parser.add_argument("--verbose", action="store_true", help="show library (PySyft) logs too")
    parser.set_defaults(partition_flags=False)
    # --verbose also after the command (fl-syft run --verbose); unset there unless given.
    verbose = Parser(add_help=False)
    verbose.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="show library (PySyft) logs too")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser = functools.partial(sub.add_parser, parents=[verbose])
    preset = SCENARIOS.get(scenario, {})

    p = sub.add_parser("simulate", help="run the federated rounds in-process (no PySyft)")
    add_partition_args(p)
    add_policy_args(p)
    add_algorithm_args(p)
    p.set_defaults(func=cmd_simulate, **preset)

    p = sub.add_parser("launch", help="start the local datasites (data owner side) until Ctrl-C")
    add_partition_args(p)
    add_site_args(p)
    add_policy_args(p)
    p.set_defaults(func=cmd_launch, **preset)

    p = sub.add_parser("serve", help="serve one datasite with your own data (one data owner) until Ctrl-C")
    g = p.add_argument_group("datasite")
    g.add_argument("--data", default=None, metavar="SOURCE",
                   help="your rows: idx:DIR, FILE.npz (X uint8 (n, 784), y (n,)) or FILE.csv (label + 784 pixels); "
                        "not with --keep (the site keeps the rows it holds)")
    g.add_argument("--name", required=True, help="the datasite's name, e.g. hospital-a")
    g.add_argument("--port", type=int, default=54879, help="port to serve on (default 54879)")
    g.add_argument("--peers", type=Path, default=None, metavar="CARDS",
                   help="the other data owners' site cards (their card.json; a file, a JSON list of cards, or a "
                        "directory of *.json cards): secure aggregation among them and this site")
    add_owner_args(g)
    add_policy_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="what your sites approved, ran and spent, read from their files (data owner)")
    p.add_argument("--state-dir", type=Path, default=Path(".fl-syft"),
                   help="the state directory serve or launch used (default .fl-syft/), or one site's directory in it")
    p.add_argument("--json", action="store_true", help="everything (every request, call and ledger) as JSON")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--last", type=int, default=10, metavar="N", help="the last N requests and calls per site "
                                                                     "(default 10)")
    g.add_argument("--all", action="store_true", help="every request, call and ledger")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("run", help="federated training over running datasites (data scientist side)")
    add_connect_args(p)
    p.add_argument("--data", type=data_source, default=None,
                   help="source of the public test set (default embedded; with --resume: the run's)")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the run whose --out was DIR from its last completed round")
    add_algorithm_args(p)
    add_resilience_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="launch datasites, train over PySyft, write outputs, shut down")
    add_partition_args(p)
    add_site_args(p)
    add_policy_args(p)
    add_algorithm_args(p)
    add_resilience_args(p)
    p.set_defaults(func=cmd_demo, **preset)

    p = sub.add_parser("score", help="score a saved model.npz on a test set (its feature map rebuilt from the file)")
    p.add_argument("model", type=Path, metavar="MODEL.npz", help="a model.npz a run wrote")
    p.add_argument("--data", type=data_source, default="embedded", help="source of the test set (default embedded)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("scenarios", help="list the named scenarios (--scenario NAME)")
    p.set_defaults(func=cmd_scenarios)
    return parser


def cmd_scenarios(args: argparse.Namespace) -> int:
    for name, preset in SCENARIOS.items():
        flags = " ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                         for k, v in preset.items())
        print(f"{name:<18} {SCENARIO_HELP[name]}\n{'':<18} = {flags}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from fl_syft.common.data import load_mnist
    from fl_syft.scientist.evaluate import features_of_test_set, score
    from fl_syft.scientist.outputs import load_model

    if not args.model.is_file():
        raise ConfigError(f"{args.model}: no such file: give the model.npz a run wrote (its --out)")
    params, fmap = load_model(args.model)
    mnist = load_mnist(args.data)
    result = score(params, features_of_test_set(fmap, mnist.X_test), mnist.y_test)
    print(f"{args.model}: accuracy {100 * result['accuracy']:.2f}%, loss {result['loss']:.4f} on {len(mnist.y_test)} "
          f"test images of {args.data} (features: {fmap.to_json()})")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from fl_syft.common.data import load_mnist
    from fl_syft.common.partition import make_shards
    from fl_syft.scientist import runs
    from fl_syft.simulate import centralized, label_histograms, local_sites

    spec = partition_spec(args)
    request = run_request(args, "simulate", partition=asdict(spec))
    mnist = load_mnist(args.data)
    spec.check(len(mnist.y_train))
    shards = make_shards(mnist.X_train, mnist.y_train, spec)
    sites = local_sites(shards, owner_policy_from(args))
    log.info("simulating %d sites (%s), %s", len(sites), spec.kind, request.algorithm)
    runs.run(sites, request, mnist.X_test, mnist.y_test,
             ceiling=lambda C, features: centralized(sites, features, C),
             histogram=(label_histograms([s.name for s in sites], shards),
                        "every row of each site's shard (the partition)"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fl_syft.scientist import runs
    from fl_syft.scientist.addresses import ds_password, invite_addresses, read_connection, url_addresses

    res = resilience(args)
    saved, rounds, request = None, getattr(args, "rounds", None), None
    if args.data is None and not args.resume:
        args.data = "embedded"
    if args.resume:
        given = [*given_settings(args), *["algorithm"] * (args.algorithm is not None),
                 *["features"] * (args.features is not None),
                 *["out"] * (args.out is not None), *["epsilon"] * (args.epsilon is not None),
                 *["secure_aggregation"] * (args.secure_aggregation is not None),
                 *["baselines"] * (args.baselines is not None), *["overwrite"] * args.overwrite]
        if given:
            raise ConfigError(f"{braced(given)}: {{resume}} continues the run with its saved settings "
                              "(only {rounds} may change): drop them")
        saved = runs.Resume.read(args.resume)
        saved.check(rounds, res)
    else:
        request = run_request(args, "run", resilience=res)
    connection = args.connection
    if args.invite:
        if args.datasite or args.connection:
            raise ConfigError("{invite} names each site and its login: drop {datasite} and {connection}")
        addresses, password, connection = invite_addresses(args.invite), None, None
    elif args.datasite:  # (a --connection beside them is not read: not saved either)
        addresses, password, connection = url_addresses(args.datasite, args.email), ds_password(None), None
    elif connection is None and saved is not None and saved.config.get("datasites"):
        addresses, password, connection = _sites_of(saved.config)
    else:
        connection = connection or DEFAULT_CONNECTION
        addresses, password = read_connection(connection), ds_password(connection)
    res.check(len(addresses))
    if saved is not None:  # scored on the test set it was scored on, unless another is given
        runs.resume_over(addresses, password, saved, args.data or saved.config.get("data", "embedded"),
                         rounds=rounds, resilience=res, approval_timeout=args.approval_timeout)
    else:
        request = dataclasses.replace(request, config={**request.config, **_where_sites_are(addresses, connection)})
        runs.run_over(addresses, password, request, args.data, approval_timeout=args.approval_timeout)
    return 0


def _where_sites_are(addresses: list, connection: Path | None) -> dict:
    """What a run saves of its sites, so that ``--resume`` finds them again: their addresses and
    the connection file it read them from (never a password)."""
    return {"datasites": [asdict(a) for a in addresses],
            **({"connection": str(connection.resolve())} if connection else {})}


def _sites_of(config: dict) -> tuple[list, object, Path | None]:
    """(addresses, password, connection file) of the sites a saved run ran with: its connection
    file (which a restarted launcher rewrites) if still there, else the addresses it saved."""
    from fl_syft.scientist.addresses import SiteAddress, ds_password, read_connection

    connection = Path(config["connection"]) if config.get("connection") else None
    if connection is not None and connection.exists():
        addresses, password = read_connection(connection), ds_password(connection)
    else:
        addresses, connection = [SiteAddress(**a) for a in config["datasites"]], None
        # Invited sites log in with their invites' passwords (read again: never saved).
        password = None if all(a.invite for a in addresses) else ds_password(None)
    log.info("resuming over the sites the run ran with: %s", ", ".join(f"{a.label} at {a.url}:{a.port}"
                                                                       for a in addresses))
    return addresses, password, connection


def cmd_demo(args: argparse.Namespace) -> int:
    from fl_syft.owner.launch import Deployment
    from fl_syft.owner.network import print_table
    from fl_syft.scientist import runs
    from fl_syft.scientist.addresses import invite_addresses

    args = _demo_budget(args)
    opts = launch_options(args, "demo")
    res = resilience(args, opts.partition.n_sites)
    partition = {} if opts.keep else {"partition": asdict(opts.partition)}
    request = run_request(args, "demo", secure=runs.secure_by_default(args.algorithm or "fedavg"), baselines=True,
                          resilience=res, **partition)
    with Deployment(opts) as deployment:
        # Importing PySyft (~5 s) and the test set's features (~10 s, once): while the sites start.
        print_table(deployment.start(while_starting=lambda: _prepare_scientist(request, args.data)),
                    deployment.connection_file, opts.host)
        # The scientist's way in, as for sites anywhere: the invites the sites' owner wrote.
        addresses = invite_addresses([deployment.state / name / "invite.json" for name in deployment.specs])
        request = dataclasses.replace(request, config={**request.config, **_where_sites_are(addresses, None)})
        runs.run_over(addresses, None, request, args.data, approval_timeout=args.approval_timeout)
    return 0


def _prepare_scientist(request: RunRequest, data: str) -> None:
    """What the scientist's side needs before the first round and can do while the sites start."""
    from fl_syft.common.data import load_mnist
    from fl_syft.common.features import feature_map
    from fl_syft.scientist.evaluate import features_of_test_set

    importlib.import_module("syft")
    features_of_test_set(feature_map(request.features), load_mnist(data).X_test)  # cached for the run


def _demo_budget(args: argparse.Namespace) -> argparse.Namespace:
    """The demo's sites are its own: under DP with baselines (the default) each gets the budget for
    both private runs, the federated one and itself alone, each spending ``--epsilon`` (default 1).
    An owner budget given (``--dp-epsilon``) is kept, and the plan checks that both fit."""
    if args.no_dp or args.baselines is False or args.dp_epsilon is not None:
        return args
    from fl_syft.common.accounting import composed
    from fl_syft.owner.policy import OwnerPolicy

    per_run = DEFAULT_EPSILON if args.epsilon is None else args.epsilon
    # The largest delta a site can have: two spends of epsilon compose to the most there.
    delta = args.dp_delta or DEFAULT_DELTA
    count = OwnerPolicy().privacy.count_noise  # the row count each site publishes once
    budget = composed([per_run, per_run], delta, [count]) * (1 + 1e-4)
    log.info("demo: each site's budget is epsilon %.3g: the federated run and the site alone each spend %g "
             "(composed, with the published row count; not a sum)", budget, per_run)
    return argparse.Namespace(**{**vars(args), "dp_epsilon": budget, "epsilon": per_run})


def main(argv: list[str] | None = None) -> int:
    parser, args, started = build_parser(), None, time.time()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "scenario", None):  # parse again with the preset as defaults
            args = build_parser(args.scenario).parse_args(argv)
        _setup_logging(args.verbose)
        with single_blas_thread():
            return args.func(args)
    except FlSyftError as e:
        kind = "data error" if isinstance(e, DataError) else "error"
        print(f"fl-syft: {kind}: {e.for_cli()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"fl-syft: interrupted{_resume_hint(args, started)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace | None, started: float) -> str:
    """How to continue an interrupted run: from the checkpoint this run wrote, if it wrote one."""
    command = getattr(args, "command", None)
    if command == "simulate":
        return " (a simulation keeps no state to resume from: run it again)"
    out = getattr(args, "resume", None) or getattr(args, "out", None)
    if command not in ("run", "demo") or out is None:
        return ""
    checkpoint = out / "checkpoint.npz"
    # A resumed run's checkpoint was there before it started; a new run's is its own only if newer.
    if not checkpoint.exists() or (not getattr(args, "resume", None) and checkpoint.stat().st_mtime < started):
        return f" before a round completed: nothing was saved in {out}"
    from fl_syft.scientist.outputs import read_checkpoint

    done = len(read_checkpoint(out)[1])
    restart = (f"restart the sites with fl-syft launch --keep --state-dir {args.state_dir} and the demo's owner "
               "flags, then " if command == "demo" else "")
    return f" after round {done}: rounds 1..{done} are saved in {out}; to continue: {restart}fl-syft run --resume {out}"


def single_blas_thread():
    """One BLAS thread per caller: sites already run in parallel, and nested threading on
    2 cores made rounds ~1.6x slower (measured with fl-syft simulate)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _setup_logging(verbose: bool) -> None:
    # Local rounds stop at --local-iters on purpose; the vetted function silences this
    # warning itself, but warnings.catch_warnings is not thread-safe across sites.
    warnings.filterwarnings("ignore", message="lbfgs failed to converge")
    logging.basicConfig(level=logging.INFO if not verbose else logging.DEBUG,
                        format="fl-syft: %(message)s", stream=sys.stderr, force=True)
    if not verbose:
        for noisy in ("syft", "uvicorn", "httpx", "urllib3", "itables"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
