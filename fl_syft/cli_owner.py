"""The data owner's commands: ``launch``, ``serve`` and ``status`` (parsed in ``fl_syft.cli``)."""

from __future__ import annotations

import argparse
import logging

from fl_syft.common.errors import ConfigError
from fl_syft.common.partition import SCENARIOS
from fl_syft.flags import PARTITION_DEFAULTS, braced, owner_policy_from, partition_spec

log = logging.getLogger("fl_syft")


def cmd_launch(args: argparse.Namespace) -> int:
    from fl_syft.owner.launch import Deployment
    from fl_syft.owner.network import print_table

    opts = launch_options(args, "launch")
    with Deployment(opts) as deployment:
        print_table(deployment.start(), deployment.connection_file, opts.host)
        log.info("datasites ready; Ctrl-C stops them")
        follow_sites(deployment)
        deployment.serve_forever()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from fl_syft.owner.launch import Deployment
    from fl_syft.owner.network import print_table
    from fl_syft.owner.serve import ServeOptions

    if (args.data is None) != args.keep:
        raise ConfigError("{keep} serves the rows the site already holds: drop {data}" if args.keep else
                          "{data} is needed: the rows to serve (idx:DIR, FILE.npz or FILE.csv)")
    opts = ServeOptions(data=args.data, name=args.name, port=args.port, host=args.host, state_dir=args.state_dir,
                        keep=args.keep, reset_privacy_budget=args.reset_privacy_budget, db_url=args.db_url,
                        verbose=args.verbose, policy=owner_policy_from(args), **tls_options(args))
    opts.check()
    with Deployment(opts) as deployment:
        table = deployment.start()
        print_table(table, deployment.connection_file, opts.host)
        site = deployment.state / opts.name
        card = deployment.invite(opts.name).card
        print(f"invite for the data scientist (their login; send it to them only, out of band): {site / 'invite.json'}"
              f"\n  they run: fl-syft run --invite invite.json [--invite OTHER-SITE.json ...]")
        print(f"card for the other data owners' --peers (public): {site / 'card.json'}"
              + (f"\n  certificate SHA-256 {card.fingerprint}: pinned by the invite and the card (a fresh start "
                 "makes a new one: send both again)" if card.fingerprint else ""))
        log.info("%s ready; Ctrl-C stops it", opts.name)
        follow_sites(deployment)
        deployment.serve_forever()
    return 0


def follow_sites(deployment) -> None:
    """One line in the owner's terminal per decision and call of the deployment's sites, as they happen."""
    from fl_syft.owner.status_view import follow

    follow([spec.dir for spec in deployment.specs.values()])


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from fl_syft.owner.status_view import read_state, render

    if args.last < 1:
        raise ConfigError(f"{{last}} {args.last} must be at least 1 (or give {{all}})")
    view = read_state(args.state_dir)
    print(json.dumps(view, indent=2) if args.json else render(view, None if args.all else args.last))
    return 0


def launch_options(args: argparse.Namespace, command: str):
    """The launcher's options; with ``--keep`` the sites keep their saved rows, so a data or
    partition flag (which would be ignored) is refused."""
    from fl_syft.owner.launch import LaunchOptions

    if args.keep:
        defaults = {**PARTITION_DEFAULTS, **SCENARIOS.get(args.scenario, {})}  # a scenario's preset is not "given"
        given = [dest for dest, default in defaults.items() if getattr(args, dest) != default]
        if given:
            raise ConfigError(f"{braced(given)}: {{keep}} restarts the sites with the rows they hold: drop them")
    spec = partition_spec(args)
    opts = LaunchOptions(partition=spec, data=args.data, base_port=args.base_port, host=args.host,
                         state_dir=args.state_dir, keep=args.keep, reset_privacy_budget=args.reset_privacy_budget,
                         db_url=args.db_url, verbose=args.verbose, command=command, policy=owner_policy_from(args),
                         **tls_options(args))
    opts.check()
    return opts


def tls_options(args: argparse.Namespace) -> dict:
    return {"tls_cert": args.tls_cert, "tls_key": args.tls_key, "insecure_http": args.insecure_http,
            "public_host": args.public_host}
