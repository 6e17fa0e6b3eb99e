"""The datasite's cache of decoded arrays (pure; the PySyft tests run it for real)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from fl_syft.owner.datasite import DecodedArrayCache


class Decoder:
    """base64 text -> uint8 array, counting how often it really decodes."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str) -> object:
        self.calls += 1
        raw = base64.b64decode(text)
        return raw if raw.startswith(b"bytes:") else np.frombuffer(raw, np.uint8).copy()


def encoded(values: np.ndarray | bytes) -> str:
    return base64.b64encode(values if isinstance(values, bytes) else values.tobytes()).decode()


@pytest.fixture
def shard() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)


def test_the_same_stored_text_is_decoded_once_and_shared_read_only(shard):
    decode = Decoder()
    cache = DecodedArrayCache(decode, min_chars=100)
    text = encoded(shard)
    first, again = cache(text), cache("".join(list(text)))  # an equal string, not the same object
    assert decode.calls == 1
    assert again is first and np.array_equal(first, shard)
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 1


def test_changed_text_of_the_same_length_is_decoded_afresh(shard):
    decode = Decoder()
    cache = DecodedArrayCache(decode, min_chars=100)
    cache(encoded(shard))
    changed = shard.copy()
    changed[-1] ^= 0xFF
    assert np.array_equal(cache(encoded(changed)), changed)
    assert decode.calls == 2


def test_small_text_and_non_arrays_are_always_decoded(shard):
    decode = Decoder()
    cache = DecodedArrayCache(decode, min_chars=100)
    small, blob = encoded(shard[:30]), encoded(b"bytes:" + shard.tobytes())
    for _ in range(2):
        cache(small)
        assert cache(blob) == b"bytes:" + shard.tobytes()
    assert decode.calls == 4


def test_holds_at_most_capacity_arrays(shard):
    decode = Decoder()
    cache = DecodedArrayCache(decode, min_chars=100, capacity=2)
    texts = [encoded(np.roll(shard, k)) for k in range(3)]
    for text in texts:
        cache(text)
    cache(texts[2]), cache(texts[1])  # the two most recent: held
    assert decode.calls == 3
    cache(texts[0])  # evicted by the third
    assert decode.calls == 4


def test_the_execution_history_is_loaded_only_when_read():
    """PySyft reads a call's history only when its output policy refuses; a call must not pay for
    every earlier call otherwise (see datasite._flat_call_cost)."""
    from fl_syft.owner.datasite import LazyHistory

    loads = []
    history = LazyHistory(lambda: loads.append(1) or ["first", "last"])
    assert loads == []
    assert len(history) == 2 and history[-1] == "last" and loads == [1]
