"""The fixed, public feature maps the model is trained on: ``scattering`` (the default) or ``pixels``.

A feature map is data-independent (nothing in it is learned from rows), so it costs no privacy:
each site computes it on its own rows, the scientist on the public test set, and averaged
coefficients mean the same thing everywhere. ``scattering`` is kymatio's 2-D wavelet scattering
transform (Scattering2D, J=2, L=8: 81 channels of 7 x 7 = 3969 features) with each image's channels
normalised in 27 groups of 3 (zero mean, unit variance per group and image, as GroupNorm without
an affine part): the ScatterNet + linear model of Tramer & Boneh 2021, "Differentially Private
Learning Needs Better Features". ``pixels`` is pixels/255 (784 features).

A spec (:attr:`FeatureMap.spec`) names the map precisely enough for an independent scorer to
rebuild it; it is saved with every model. Bump ``version`` whenever the numbers would change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fl_syft.common.errors import ConfigError
from fl_syft.common.files import array_sha256, save_private_array

log = logging.getLogger(__name__)

DEFAULT = "scattering"
BATCH = 500  # images per scattering call: ~1 ms each, memory ~0.3 MB each while computing
BOUND = float(np.sqrt(147))  # |feature| at most: pixels in [0, 1]; a group of 147 values normalised to unit variance


@dataclass(frozen=True)
class FeatureMap:
    """One named feature map: ``spec`` (JSON-able, saved with models) and ``width`` (features per image)."""

    name: str
    spec: dict
    width: int

    def to_json(self) -> str:
        return json.dumps(self.spec, sort_keys=True)

    @property
    def digest(self) -> str:
        """Short hash of the spec: part of a cache file's name, so a changed map never reuses old features."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def transform(self, pixels: np.ndarray, progress: Callable[[int], None] = lambda n: None) -> np.ndarray:
        """(n, width) float32 features of (n, 784) uint8 pixels; ``progress(k)`` after each k images."""
        out = np.empty((len(pixels), self.width), np.float32)
        for start in range(0, len(pixels), BATCH):
            block = pixels[start:start + BATCH]
            out[start:start + len(block)] = _TRANSFORMS[self.name](self, block)
            progress(len(block))
        return out


def _pixels(fmap: FeatureMap, pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) * np.float32(1.0 / 255.0)


_SCATTERING: dict = {}  # J, L -> kymatio's Scattering2D (its filters take ~0.1 s to build)


def _scattering(fmap: FeatureMap, pixels: np.ndarray) -> np.ndarray:
    from kymatio.numpy import Scattering2D

    spec = fmap.spec
    key = (spec["J"], spec["L"])
    if key not in _SCATTERING:
        _SCATTERING[key] = Scattering2D(J=spec["J"], shape=(28, 28), L=spec["L"])
    images = _pixels(fmap, pixels).reshape(-1, 28, 28)  # the spec's input: pixels/255
    coeffs = _SCATTERING[key](images)  # (n, channels, 7, 7) float32
    grouped = coeffs.reshape(len(images), spec["groups"], -1).astype(np.float64)
    grouped -= grouped.mean(axis=2, keepdims=True)
    grouped /= np.sqrt(grouped.var(axis=2, keepdims=True) + spec["eps"])
    # No tiny nonzero features: their products in a DP step would be subnormal floats (a slow CPU
    # path, so a step's time would depend on the rows). Affects ~1e-5 of the entries.
    grouped[np.abs(grouped) < spec["floor"]] = 0.0
    return grouped.reshape(len(images), -1).astype(np.float32)


_TRANSFORMS = {"pixels": _pixels, "scattering": _scattering}

MAPS: dict[str, FeatureMap] = {
    "scattering": FeatureMap("scattering", {"name": "scattering", "version": 2, "J": 2, "L": 8, "shape": [28, 28],
                                            "input": "pixels/255", "norm": "group", "groups": 27, "eps": 1e-05,
                                            "floor": 1e-05}, 81 * 7 * 7),
    "pixels": FeatureMap("pixels", {"name": "pixels", "version": 1, "input": "pixels/255"}, 28 * 28),
}


def feature_map(name: str) -> FeatureMap:
    """The feature map called ``name``; ConfigError naming the choices otherwise."""
    if name not in MAPS:
        raise ConfigError(f"--features must be one of {', '.join(MAPS)}, got {name!r}")
    return MAPS[name]


def from_spec(text: str) -> FeatureMap:
    """The feature map a saved model's ``features`` JSON names (refused if this version computes it differently)."""
    try:
        spec = json.loads(text)
        fmap = MAPS[spec["name"]]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"unknown feature spec {text[:200]!r}; this fl-syft computes {', '.join(MAPS)}") from None
    if spec != fmap.spec:
        raise ConfigError(f"the model's feature spec {json.dumps(spec, sort_keys=True)} differs from this "
                          f"fl-syft's ({fmap.to_json()}): score it with the version that trained it")
    return fmap


def cached(fmap: FeatureMap, pixels: np.ndarray, directory: Path | None, what: str) -> np.ndarray:
    """:meth:`FeatureMap.transform` of ``pixels``, computed once: kept in ``directory`` (owner-only, 0700/0600) as
    ``<first 32 hex digits of the images' SHA-256>-<spec digest>.npy`` and read back from there after (if
    finite and within ``BOUND``: else computed again). Read-only. ``what`` names the images
    on the progress bar. Pixels are never cached (computing them is as fast as reading them)."""
    path = None if directory is None or fmap.name == "pixels" else \
        directory / f"{array_sha256(pixels)[:32]}-{fmap.digest}.npy"
    if path is not None and path.exists():
        try:
            features = np.load(path, allow_pickle=False)
            if features.shape == (len(pixels), fmap.width) and features.dtype == np.float32 and _bounded(features):
                return _read_only(features)
        except (OSError, ValueError):
            pass
        log.warning("%s: the cached %s features in %s are unreadable or not what this map computes; computing "
                    "them again", what, fmap.name, path)
    started = time.perf_counter()
    with tqdm(total=len(pixels), desc=f"{fmap.name} features, {what}", unit="img", leave=False,
              disable=len(pixels) < 5 * BATCH or None) as bar:
        features = fmap.transform(pixels, bar.update)
    if path is not None:
        save_private_array(path, features)
        log.info("%s: %s features of %d images computed in %.0f s (kept in %s)", what, fmap.name, len(pixels),
                 time.perf_counter() - started, directory)
    return _read_only(features)


def _bounded(features: np.ndarray) -> bool:
    """Every entry finite and within ``BOUND`` (as the guard relies on), checked a block at a time
    (a whole-array temporary would double the site's memory while it starts); NaN fails."""
    return all(bool(np.abs(features[start:start + 4096]).max(initial=0.0) <= BOUND)
               for start in range(0, len(features), 4096))


def _read_only(array: np.ndarray) -> np.ndarray:
    """Shared by every call of a site: nothing may write to it."""
    array.flags.writeable = False
    return array
