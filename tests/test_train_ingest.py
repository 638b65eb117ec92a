"""A worker's held shard: read once from Ray Data in shard order, then one seeded permutation per epoch."""

from __future__ import annotations

import pytest

from tightfit.train.loop import _held_batches, _hold_shard


@pytest.fixture(scope="module")
def held():
    """A real Ray Data iterator over 100 tokenized-looking rows (ids, mask, labels), held as tensors."""
    import numpy as np
    import ray
    import ray.data

    from tightfit.settings import start_local_ray

    start_local_ray(num_cpus=1, log_to_driver=False)
    try:
        rows = [{"input_ids": np.arange(i, i + 8, dtype=np.int64), "attention_mask": np.ones(8, dtype=np.int64),
                 "labels": i % 2} for i in range(100)]
        dataset = ray.data.from_items(rows, override_num_blocks=7).materialize()
        yield _hold_shard(dataset.iterator())
    finally:
        ray.shutdown()


def test_a_held_shard_keeps_every_row_in_shard_order(held) -> None:
    assert set(held) == {"input_ids", "attention_mask", "labels"}
    assert held["input_ids"][:, 0].tolist() == list(range(100))  # one read, in order, across 7 blocks
    assert held["labels"].tolist() == [i % 2 for i in range(100)]


def test_each_epoch_visits_every_row_once_in_a_seeded_order(held) -> None:
    import torch

    def epoch(seed: int) -> list[list[int]]:
        return [b["input_ids"][:, 0].tolist() for b in _held_batches(held, 32, seed, torch.device("cpu"))]

    first = epoch(1)
    assert [len(b) for b in first] == [32, 32, 32, 4]
    assert sorted(row for batch in first for row in batch) == list(range(100))  # every row exactly once
    assert epoch(1) == first  # a resumed run draws the same batches for the same epoch
    assert epoch(2) != first and sorted(row for batch in epoch(2) for row in batch) == list(range(100))
    for batch in _held_batches(held, 32, 1, torch.device("cpu")):  # rows stay whole across the keys
        assert torch.equal(batch["labels"], batch["input_ids"][:, 0] % 2)
