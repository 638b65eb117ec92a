"""How a fine-tuning run's splits reach the workers: in memory, or streamed by Ray Data.

``memory``: the driver tokenizes each split once and puts the arrays in Ray's object store (one ``ray.put``);
each worker copies them out and reads its rank's share through a torch ``DataLoader`` with a seeded
``DistributedSampler`` (the shuffle torch DDP users write). ``ray_data``: the split becomes a Ray Dataset,
tokenized by Ray Data tasks, split per worker and read with ``iter_torch_batches``; a split that does not fit
the store streams, so no worker ever holds it whole.

``auto`` picks ``memory`` for a split whose tokens take at most ``MEMORY_INGEST_MAX_BYTES``. Such a split
would be cached whole by Ray Data anyway (``materialize()``), so streaming buys nothing, while Ray Data's split
coordinator and stats actor (and the CPU reserved for its tasks, an idle pooled worker) are each another Ray
Python process costing about 0.0075 cores (``benchmarks/finetune_profile.py``); on a machine whose every core
trains, that CPU comes out of the lockstep DDP workers.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Literal

Ingest = Literal["auto", "memory", "ray_data"]
COLUMNS = ("input_ids", "attention_mask", "labels")
MEMORY_INGEST_MAX_BYTES = 256 * 2**20
"""``auto``: splits whose tokens (train and validation together) take at most this go in memory."""
CACHE_SHARE = 0.25  # Ray Data: cache the tokenized split when it takes at most this share of the object store


def tokenized_bytes(rows: int, max_length: int) -> int:
    """Bytes of ``rows`` tokenized rows: int64 ids and mask of ``max_length`` tokens and an int64 label."""
    return rows * (2 * max_length + 1) * 8


def choose_ingest(choice: Ingest, rows: int, max_length: int) -> Literal["memory", "ray_data"]:
    """``auto`` -> ``memory`` when ``rows`` tokenized rows take at most ``MEMORY_INGEST_MAX_BYTES``."""
    if choice != "auto":
        return choice
    return "memory" if tokenized_bytes(rows, max_length) <= MEMORY_INGEST_MAX_BYTES else "ray_data"


@functools.lru_cache(maxsize=4)
def _tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def tokenize_batch(batch: Any, model_dir: str, max_length: int) -> dict[str, Any]:
    """Text -> fixed-length ids, mask and labels (int64 numpy): a Ray Data ``map_batches`` function, and what
    ``memory`` ingest applies to a whole split."""
    import numpy as np

    encoded = _tokenizer(model_dir)(
        [str(t) for t in batch["text"]],
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return {
        "input_ids": encoded["input_ids"].astype(np.int64),
        "attention_mask": encoded["attention_mask"].astype(np.int64),
        "labels": np.asarray(batch["label"], dtype=np.int64),
    }


def put_split(frame: Any, model_dir: str, max_length: int) -> Any:
    """``memory`` ingest, driver side: the split tokenized once, in Ray's object store; its ``ObjectRef``."""
    import ray

    return ray.put(tokenize_batch(frame, model_dir, max_length))


def ray_dataset(frame: Any, model_dir: str, max_length: int, rows_per_block: int = 128, *,
                cache: bool | None = None) -> Any:
    """The split as a Ray Dataset of fixed-length ids, mask and labels, tokenized by Ray Data tasks in blocks.

    A split whose tokens take at most ``CACHE_SHARE`` of the cluster's object store is tokenized once, here,
    and cached (``materialize()``, Ray Data's advice for a preprocessed dataset that fits the object store);
    a lazy dataset would tokenize again every epoch, in tasks that take CPU from the training workers. A larger
    split streams, so workers never hold it whole. ``cache`` forces either."""
    import ray
    import ray.data

    chunks = [frame.iloc[i : i + rows_per_block] for i in range(0, len(frame), rows_per_block)] or [frame]
    dataset = ray.data.from_pandas([c[["text", "label"]].reset_index(drop=True) for c in chunks])
    tokenize: Any = tokenize_batch
    tokenized = dataset.map_batches(
        tokenize,
        batch_format="pandas",
        batch_size=rows_per_block,
        fn_kwargs={"model_dir": model_dir, "max_length": max_length},
    )
    if cache is None:
        store = float(ray.cluster_resources().get("object_store_memory", 0))
        cache = tokenized_bytes(len(frame), max_length) <= CACHE_SHARE * store
    if not cache:
        return tokenized
    tokenized.context.execution_options.preserve_order = True  # this dataset's own context: rows in frame order
    return tokenized.materialize()


class MemoryShard:
    """``memory`` ingest, worker side: this rank's share of a split held by the object store.

    Training batches come from a ``DistributedSampler`` seeded with the run's seed and set to the epoch, so
    every rank draws a disjoint share (padded to equal length, as DDP needs equal step counts) and a run
    resumed at an epoch draws what an unbroken run would. Validation takes rows ``rank::world`` in order,
    unpadded, so the all-reduced counts cover each row once.
    """

    def __init__(self, ref: Any, *, rank: int, world: int, seed: int) -> None:
        import numpy as np
        import ray
        import torch
        from torch.utils.data import TensorDataset

        arrays = ray.get(ref)  # read-only views of the store's buffer: copy before torch takes them
        self.dataset = TensorDataset(*(torch.from_numpy(np.array(arrays[c])) for c in COLUMNS))
        self.rank, self.world, self.seed = rank, world, seed

    def iter_train(self, batch_size: int, epoch: int, device: Any) -> Iterator[dict[str, Any]]:
        from torch.utils.data import DataLoader, DistributedSampler

        sampler: DistributedSampler[Any] = DistributedSampler(self.dataset, num_replicas=self.world, rank=self.rank,
                                                              shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        yield from _as_dicts(DataLoader(self.dataset, batch_size=batch_size, sampler=sampler), device)

    def iter_eval(self, batch_size: int, device: Any) -> Iterator[dict[str, Any]]:
        from torch.utils.data import DataLoader, Subset

        rows = Subset(self.dataset, range(self.rank, len(self.dataset), self.world))
        yield from _as_dicts(DataLoader(rows, batch_size=batch_size), device)


def _as_dicts(loader: Any, device: Any) -> Iterator[dict[str, Any]]:
    for tensors in loader:
        yield {c: t.to(device) for c, t in zip(COLUMNS, tensors, strict=True)}


class RayDataShard:
    """``ray_data`` ingest, worker side: Ray Train's dataset shard read with ``iter_torch_batches``, the local
    shuffle seeded per epoch (Ray Data keeps the shard order: ``preserve_order``)."""

    def __init__(self, shard: Any, *, seed: int) -> None:
        self.shard, self.seed = shard, seed

    def iter_train(self, batch_size: int, epoch: int, device: Any) -> Iterator[dict[str, Any]]:
        yield from self.shard.iter_torch_batches(
            batch_size=batch_size, local_shuffle_buffer_size=4 * batch_size,
            local_shuffle_seed=self.seed + epoch, device=device,
        )

    def iter_eval(self, batch_size: int, device: Any) -> Iterator[dict[str, Any]]:
        yield from self.shard.iter_torch_batches(batch_size=batch_size, device=device)


def worker_shards(cfg: dict[str, Any], rank: int, world: int) -> tuple[Any, Any]:
    """This worker's train and validation shards, by the run's ingest (``cfg["ingest"]``)."""
    seed = int(cfg["seed"])
    if cfg.get("ingest") == "memory":
        return (MemoryShard(cfg["train_ref"], rank=rank, world=world, seed=seed),
                MemoryShard(cfg["validation_ref"], rank=rank, world=world, seed=seed))
    import ray.train

    return (RayDataShard(ray.train.get_dataset_shard("train"), seed=seed),
            RayDataShard(ray.train.get_dataset_shard("validation"), seed=seed))
