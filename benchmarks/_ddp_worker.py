"""The plain-PyTorch reference of the fine-tuning benchmark: DDP launched by ``torchrun``, no Ray.

Every process runs 1 thread, loads the same MiniLM classifier and the same Rotten Tomatoes rows as the Ray
Train runs (``tightfit.data.load_dataset``, fixed-length tokens), shards them with a seeded
``DistributedSampler``, and trains with the same step (AdamW, linear warm-up/decay, grad clip 1.0,
micro-batch = global batch / processes, each batch cut to its longest sequence as tightfit's loop cuts it:
dynamic padding, what a user of ``DataCollatorWithPadding`` gets). Per epoch it times the training loop only,
as the Ray loop does; rank 0 writes the summed samples/s of every epoch to ``--out``.

    python -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 --master-port PORT \\
        benchmarks/_ddp_worker.py --rows 1024 --epochs 2 --global-batch 64 --lr 2e-4 --out rates.json

Run without ``torchrun`` it only prints this help (``make bench`` runs every script in this folder).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any


def trimmed(ids: Any, mask: Any) -> tuple[Any, Any]:
    """Ids and mask cut to the batch's longest sequence (the pad columns only cost compute)."""
    longest = max(1, int(mask.sum(dim=1).max()))
    return ids[:, :longest], mask[:, :longest]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--global-batch", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers import logging as hf_logging

    from tightfit.assets import minilm_path
    from tightfit.data import load_dataset

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    micro = max(1, args.global_batch // world)

    data = load_dataset("rotten_tomatoes", seed=args.seed, limit=args.rows)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    enc = tokenizer([str(t) for t in data.train["text"]], padding="max_length", truncation=True,
                    max_length=args.max_length, return_tensors="pt")
    labels = torch.tensor(data.train["label"].to_numpy(), dtype=torch.long)
    dataset = TensorDataset(enc["input_ids"], enc["attention_mask"], labels)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, batch_size=micro, sampler=sampler)

    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=data.num_labels)
    model.train()
    ddp = DistributedDataParallel(model, broadcast_buffers=False) if world > 1 else model
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=0.01)
    total = max(1, math.ceil(len(dataset) / world / micro)) * args.epochs
    warmup = int(0.1 * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(warmup, 1) if s < warmup else max(0.0, (total - s) / max(total - warmup, 1))
    )
    rates = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(args.seed * 1000 + epoch * 10 + rank)
        started, seen = time.perf_counter(), 0
        for ids, mask, y in loader:
            ids, mask = trimmed(ids, mask)
            logits = ddp(input_ids=ids, attention_mask=mask).logits.float()
            loss = torch.nn.functional.cross_entropy(logits, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(y)
        rate = torch.tensor([seen / (time.perf_counter() - started)], dtype=torch.float64)
        dist.all_reduce(rate)  # summed over processes, as the Ray runs sum their workers' rates
        rates.append(float(rate[0]))
    if rank == 0:
        Path(args.out).write_text(json.dumps({"world": world, "micro_batch": micro, "samples_per_s": rates}))
    dist.destroy_process_group()


if __name__ == "__main__":
    if "RANK" in os.environ:
        main()
    else:
        print(__doc__)
