"""The datasite's caches of decoded arrays and asset reads (pure; the PySyft tests run them for real)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from fl_syft.owner.syft_patches import AssetReads, DecodedArrayCache


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
    every earlier call otherwise (see syft_patches.flat_call_cost)."""
    from fl_syft.owner.syft_patches import LazyHistory

    loads = []
    history = LazyHistory(lambda: loads.append(1) or ["first", "last"])
    assert loads == []
    assert len(history) == 2 and history[-1] == "last" and loads == [1]


class Stash:
    """A database's action-object store: what ``get`` returns for whom, counting real reads."""

    def __init__(self, objects: dict) -> None:
        self.objects, self.reads = objects, 0

    def get(self, uid, credentials, has_permission=False):
        from syft.types.result import Ok

        self.reads += 1
        return Ok(self.objects[uid.id])

    def set_or_update(self, context, action_object):
        self.objects[action_object.id.id] = action_object

    def set(self, credentials, obj, **options):
        self.objects[obj.id.id] = obj

    update = upsert = set

    def delete_by_uid(self, credentials, uid):
        self.objects.pop(uid.id)


def twin(values: np.ndarray):
    from syft.service.action.action_object import ActionObject
    from syft.types.twin_object import TwinObject

    return TwinObject(private_obj=ActionObject.from_obj(values), mock_obj=ActionObject.from_obj(values[:2] * 0))


def test_root_reads_of_an_asset_are_served_from_memory_as_copies(shard):
    asset, other = twin(shard), twin(shard[:3])
    stash = Stash({asset.id.id: asset, other.id.id: other})
    reads = AssetReads(stash, "root-key", {asset.id.id})
    reads.install()
    first, second = (stash.get(uid=asset.id, credentials="root-key").unwrap() for _ in range(2))
    assert stash.reads == 1 and first is not second and first.private_obj is not second.private_obj
    assert np.array_equal(second.private_obj.syft_action_data, shard)
    first.private_obj.syft_twin_type = "set by PySyft"  # what one call sets stays out of the next
    assert stash.get(uid=asset.id, credentials="root-key").unwrap().private_obj.syft_twin_type != "set by PySyft"
    stash.get(uid=asset.id, credentials="a scientist")  # anyone else: the store and its permission checks
    stash.get(uid=other.id, credentials="root-key")  # not an asset
    assert stash.reads == 3


def test_a_write_to_an_asset_is_read_afresh(shard):
    asset = twin(shard)
    stash = Stash({asset.id.id: asset})
    AssetReads(stash, "root-key", {asset.id.id}).install()
    stash.get(uid=asset.id, credentials="root-key")
    replaced = twin(shard[::-1].copy())
    replaced.id = asset.id
    stash.set_or_update(None, action_object=replaced)
    got = stash.get(uid=asset.id, credentials="root-key").unwrap()
    assert stash.reads == 2 and np.array_equal(got.private_obj.syft_action_data, shard[::-1])
