"""Split a training set into per-site shards, deterministically by seed.

A shard is one (n, 785) uint8 array: 784 pixels then the label in the last column; the
format ``ml_experiment`` reads, and the one each datasite stores (one array is the cheapest
thing for PySyft to move).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_syft.common.errors import ConfigError

KINDS = ("iid", "dirichlet", "sizes")

# Named presets of the partition settings (explicit settings still win): ``fl-syft scenarios``.
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


@dataclass(frozen=True)
class PartitionSpec:
    """How to split: ``kind`` in KINDS; ``sites`` = number of shards; ``alpha`` (dirichlet);
    ``sizes`` (rows per site, for kind "sizes"); ``noisy_sites`` (1-based) get Gaussian
    pixel noise of ``noise_std`` (pixel units 0..255)."""

    kind: str = "iid"
    sites: int = 2
    alpha: float = 0.5
    sizes: tuple[int, ...] = ()
    noisy_sites: tuple[int, ...] = ()
    noise_std: float = 0.0
    seed: int = 0

    @property
    def n_sites(self) -> int:
        return len(self.sizes) if self.kind == "sizes" else self.sites

    def check(self, n_rows: int) -> None:
        """Raise ConfigError (one line naming the setting) if this cannot split ``n_rows`` rows."""
        if self.kind not in KINDS:
            raise ConfigError(f"{{partition}} must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "sizes":
            if not self.sizes or min(self.sizes) < 1:
                raise ConfigError("{sizes} needs positive row counts, e.g. 1000,3000,2000,4000")
            if sum(self.sizes) > n_rows:
                raise ConfigError(f"{{sizes}} add up to {sum(self.sizes)} rows but the data has {n_rows}")
        elif self.sites < 1:
            raise ConfigError(f"{{sites}} must be at least 1, got {self.sites}")
        elif self.sites > n_rows:
            raise ConfigError(f"{{sites}} {self.sites} is more than the {n_rows} rows available")
        if self.kind == "dirichlet" and not self.alpha > 0:
            raise ConfigError(f"{{alpha}} must be > 0, got {self.alpha}")
        if self.noise_std < 0:
            raise ConfigError(f"{{noise_std}} must be >= 0, got {self.noise_std}")
        bad = [s for s in self.noisy_sites if not 1 <= s <= self.n_sites]
        if bad:
            raise ConfigError(f"{{noisy_sites}} {bad} out of range: sites are numbered 1..{self.n_sites}")


def split_indices(y: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """Disjoint sorted row-index arrays, one per site. ``y``: (n,) int labels."""
    spec.check(len(y))
    rng = np.random.default_rng(spec.seed)
    if spec.kind == "iid":
        parts = np.array_split(rng.permutation(len(y)), spec.sites)
    elif spec.kind == "sizes":
        bounds = np.cumsum(spec.sizes)[:-1]
        parts = np.split(rng.permutation(len(y))[: sum(spec.sizes)], bounds)
    else:
        parts = _dirichlet(y, spec.sites, spec.alpha, rng)
    return [np.sort(p) for p in parts]


def _dirichlet(y: np.ndarray, n_sites: int, alpha: float, rng: np.random.Generator,
               min_rows: int = 10, attempts: int = 1000) -> list[np.ndarray]:
    """Label skew: each class is spread over the sites by proportions ~ Dir(alpha).

    Redrawn until every site holds at least ``min_rows`` rows (so no site is empty).
    """
    classes = np.unique(y)
    min_rows = min(min_rows, len(y) // n_sites)
    for _ in range(attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
        for c in classes:
            rows = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_sites, alpha)))[:-1] * len(rows)).astype(int)
            for site, chunk in enumerate(np.split(rows, cuts)):
                parts[site].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= min_rows:
            return merged
    raise ConfigError(f"{{alpha}} {alpha} over {n_sites} sites leaves a site nearly empty; "
                      "raise {alpha} or lower {sites}")


def add_noise(X: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian pixel noise of ``std`` (0..255 units), clipped to 0..255, as uint8."""
    noisy = X.astype(np.float32) + rng.normal(0.0, std, X.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def pack(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, 784) uint8 pixels + (n,) labels -> one (n, 785) uint8 shard, label last."""
    return np.column_stack([X.astype(np.uint8, copy=False), y.astype(np.uint8)])


def make_shards(X: np.ndarray, y: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """The per-site shards (packed, noise applied to ``spec.noisy_sites``)."""
    rng = np.random.default_rng([spec.seed, 1])  # noise stream independent of the split
    shards = []
    for number, rows in enumerate(split_indices(y, spec), start=1):
        X_site = add_noise(X[rows], spec.noise_std, rng) if number in spec.noisy_sites else X[rows]
        shards.append(pack(X_site, y[rows]))
    return shards


def scenario(name: str) -> PartitionSpec:
    """The partition of a named scenario (see :data:`SCENARIOS`)."""
    preset = dict(SCENARIOS[name])
    kind = preset.pop("partition")
    if kind == "sizes":
        preset["sites"] = len(preset["sizes"])
    return PartitionSpec(kind=kind, **preset)


def label_histogram(shards: list[np.ndarray], n_classes: int = 10) -> np.ndarray:
    """(n_sites, n_classes) row counts per label."""
    return np.stack([np.bincount(s[:, -1], minlength=n_classes) for s in shards])
