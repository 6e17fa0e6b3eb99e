"""The data owner's privacy policy: what every call of a vetted function at a site may do.

The owner sets it when the site starts (``--dp-epsilon``, ``--dp-delta``, ``--no-dp``, ...);
the site stores it, enforces it on every call (``fl_syft.owner.guard``) and publishes it, so
the scientist can plan a run. Everything privacy-relevant is here, never in the scientist's
config: the clipping norm, the lowest noise a call may ask for, the minimum rows; the allowed
range of every config key of every vetted function is its schema's (``common.protocol``), which
the policy publishes. Shared by both sides: the owner enforces it, the scientist reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fl_syft.common.errors import ConfigError, counted
from fl_syft.common.protocol import SCHEMAS

DEFAULT_EPSILON = 1.0
DEFAULT_DELTA = 1e-5


@dataclass(frozen=True)
class PrivacyPolicy:
    """One site's policy. ``epsilon`` None means no differential privacy (``--no-dp``).

    Protected unit: one row of the site's shard, add/remove-one-row neighbouring.
    ``epsilon``/``delta``: the site's total budget over every call, by every account.
    ``clip``: the L2 norm each row's gradient is clipped to (the Gaussian mechanism's sensitivity).
    ``min_noise``: the lowest noise multiplier (noise std / clip) a call may ask for.
    ``min_rows``: no call trains or evaluates on fewer rows (with or without DP).
    ``count_noise``: std, in rows, of the row count the site publishes once (charged once).
    ``model_bound``: every entry of a model a call sends must be finite and within +-this (what
    keeps the vetted steps total: no row's logits can overflow; see ``owner.guard``).
    ``storage_quota_mb``: what each scientist's account may make the site store (uploads, requests).
    ``peers``: the federation's sites (name -> the datasite's verify key, hex), this one among
    them, that it runs secure aggregation with; ``threshold``: how many of them a sum needs (> half; default the
    smallest majority); ``require_secure_aggregation``: refuse calls without it.
    """

    epsilon: float | None = DEFAULT_EPSILON
    delta: float = DEFAULT_DELTA
    clip: float = 1.0
    min_noise: float = 0.5
    min_rows: int = 50
    count_noise: float = 100.0
    model_bound: float = 1e4
    storage_quota_mb: float = 4096.0  # ~2000 DP calls on scattering features (~1.9 MiB kept per call and model)
    peers: dict = field(default_factory=dict)
    threshold: int | None = None
    require_secure_aggregation: bool = False

    def __post_init__(self) -> None:
        if self.peers and self.threshold is None:
            object.__setattr__(self, "threshold", len(self.peers) // 2 + 1)

    @property
    def dp(self) -> bool:
        return self.epsilon is not None

    @property
    def bounds(self) -> dict[str, dict[str, Any]]:
        """function -> config key -> (low, high) inclusive (low None: ``min_noise``), or the type of
        a flag or seed: the schemas of the functions this site runs (as its guard checks them)."""
        return {fn: s.bounds() for fn, s in SCHEMAS["dp" if self.dp else "plain"].items()}

    def check(self, rows: int | None = None) -> None:
        """Raise ConfigError (naming the owner's setting) for a policy that cannot protect ``rows`` rows."""
        if self.dp and not self.epsilon > 0:
            raise ConfigError(f"{{dp_epsilon}} must be > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"{{dp_delta}} must be in (0, 1), got {self.delta}")
        if rows is not None and self.dp and not self.delta < 1 / rows:
            raise ConfigError(f"{{dp_delta}} {self.delta:g} must be below 1/rows = {1 / rows:.2g} ({rows} rows): "
                              "a larger delta allows releasing a row outright")
        if not 1e-3 <= self.clip <= 1e3:
            raise ConfigError(f"{{dp_clip}} must be within 1e-3..1e3 (the L2 norm each row's gradient is clipped to; "
                              f"default 1), got {self.clip:g}")
        if not self.min_noise > 0 or not self.count_noise > 0:
            raise ConfigError("the policy's min_noise and count_noise must be > 0")
        if not 1.0 <= self.model_bound <= 1e6:
            raise ConfigError(f"the policy's model_bound must be within 1..1e6, got {self.model_bound:g}")
        if not self.storage_quota_mb > 0:
            raise ConfigError(f"the policy's storage_quota_mb must be > 0, got {self.storage_quota_mb:g}")
        if self.min_rows < 1:
            raise ConfigError(f"{{min_rows}} must be at least 1, got {self.min_rows}")
        if rows is not None and rows < self.min_rows:
            raise ConfigError(f"{{min_rows}} {self.min_rows} is more than the {rows} rows this site holds: give it at "
                              f"least {self.min_rows} rows, or lower {{min_rows}} to {rows} or less (the owner's "
                              "choice: no call trains or evaluates on fewer rows)")
        if self.peers and not len(self.peers) / 2 < self.threshold <= len(self.peers):
            raise ConfigError(f"{{secagg_threshold}} {self.threshold} must be more than half of the federation's "
                              f"{counted(len(self.peers), 'site')} (this one among them) and at most all of them "
                              "(a minority could unmask one site's update)")
        if self.require_secure_aggregation and not self.peers:
            raise ConfigError("{require_secure_aggregation} needs the federation's peers ({peers})")

    def functions(self) -> list[str]:
        """The vetted functions this policy lets run (others are refused by the site)."""
        return sorted(self.bounds)

    def to_dict(self) -> dict:
        """As JSON: the settings, and the bounds (types by name) for the scientist to read."""
        bounds = {fn: {k: (v.__name__ if isinstance(v, type) else list(v)) for k, v in keys.items()}
                  for fn, keys in self.bounds.items()}
        return {**asdict(self), "bounds": bounds}

    @classmethod
    def from_dict(cls, doc: dict) -> PrivacyPolicy:
        """The policy of :meth:`to_dict` (its bounds follow from ``epsilon``: they are the schemas')."""
        return cls(**{k: v for k, v in doc.items() if k != "bounds"})

    def describe(self) -> str:
        """One line for the owner's terminal and the scientist's report."""
        secure = "; no secure aggregation (no peers)" if not self.peers else (
            f"; secure aggregation among {counted(len(self.peers), 'site')} (this one among them), "
            f"threshold {self.threshold}"
            + (" (required)" if self.require_secure_aggregation else ""))
        if not self.dp:
            return (f"no differential privacy (--no-dp): calls return exact results, from which the data scientist "
                    f"can reconstruct individual rows; at least {self.min_rows} rows per call{secure}")
        return (f"record-level differential privacy: epsilon {self.epsilon:g}, delta {self.delta:g} in total for "
                f"this site (one row, add/remove); gradients clipped to {self.clip:g}, noise multiplier at least "
                f"{self.min_noise:g}; at least {self.min_rows} rows per call{secure}")


def default_delta(rows: int) -> float:
    """1e-5, or smaller where the shard is large: always below 1/rows."""
    return min(DEFAULT_DELTA, 1.0 / (2 * rows))

