"""``fl-syft serve``: one datasite for one data owner, on their machine, with their own data.

The same code path as the launcher (:class:`fl_syft.owner.launch.Deployment`) with one site
whose rows come from the owner's file instead of a partition: same accounts, approver,
audit log, synthetic mock and secrets. The data scientist reaches it with
``fl-syft run --datasite http://HOST:PORT``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fl_syft.common.errors import ConfigError
from fl_syft.owner.launch import SiteSetup, site_db_url
from fl_syft.owner.network import check_tls
from fl_syft.owner.policy import OwnerPolicy

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass
class ServeOptions:
    """One site named ``name`` serving the rows of ``data`` (see ``owner.data.load_shard``)."""

    data: str | None  # None with keep: the site serves the rows it holds
    name: str
    port: int = 54879
    host: str = "127.0.0.1"
    state_dir: Path = Path(".fl-syft")
    keep: bool = False
    reset_privacy_budget: bool = False  # else the rows keep their budget over fresh starts
    db_url: str | None = None  # PostgreSQL URL prefix; the site's database is derived from it
    verbose: bool = False
    policy: OwnerPolicy = field(default_factory=OwnerPolicy)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    public_host: str | None = None  # the host invites and cards name (default: the bind address)
    command = "serve"
    port_field = "port"

    def check(self) -> None:
        """Raise ConfigError (one line naming the setting) for values that cannot work."""
        if not NAME.match(self.name):
            raise ConfigError(f"{{name}} {self.name!r} must be 1-63 letters, digits, '.', '_' or '-'")
        if not 1024 <= self.port <= 65535:
            raise ConfigError(f"{{port}} {self.port} must be in 1024..65535")
        if self.db_url:
            site_db_url(self.db_url, self.name)
        check_tls(self)
        # The federation's counts (threshold, --require-secure-aggregation) before anything starts.
        self.policy.for_sites([self.name])

    def setups(self) -> list[SiteSetup]:
        return [SiteSetup(self.name, self.port, site_db_url(self.db_url, self.name) if self.db_url else None)]

    def load_shards(self) -> list[np.ndarray]:
        from fl_syft.owner.data import load_shard

        return [load_shard(self.data)]
