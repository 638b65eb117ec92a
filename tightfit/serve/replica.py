"""What runs inside a serving replica, kept apart from Ray so it can be tested alone.

- `MultiplexedPool`: the variants a replica holds, through Ray Serve's ``@serve.multiplexed`` (model-id
  routing), evicted least-recently-used by predicted bytes (not only by count), so the pool never holds
  more weights than the plan's pool budget.
- `read_body`: the request body under the plan's byte limit (413 from Content-Length, or while streaming).
- `validate_request`: the JSON request schema, with a 4xx status and a message for each bad kind.
- `classify` / `generate`: one batched forward (or greedy generation) for a loaded variant, through its
  runner: torch, or ONNX Runtime (a replica serving only ONNX variants never imports torch).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tightfit.assets import load_model
from tightfit.compress.runtime import TorchRunner
from tightfit.compress.variant import load_variant, read_manifest, runtime_of
from tightfit.memory.rss import trim_heap
from tightfit.names import RUNTIME_ONNXRUNTIME
from tightfit.serve.proxy import BodyError, read_capped
from tightfit.serve.schema import PlannedVariant, ServePlan


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class LoadedVariant:
    """A pool member: its plan and its runner (``compress.runtime.Runner``: torch or ONNX Runtime)."""

    plan: PlannedVariant
    runner: Any

    @property
    def model(self) -> Any:
        """The torch module (None for an ONNX variant)."""
        return getattr(self.runner, "model", None)

    @property
    def tokenizer(self) -> Any:
        return self.runner.tokenizer

    @property
    def labels(self) -> list[str]:
        return list(self.runner.labels)

    @property
    def runtime(self) -> str:
        return str(self.runner.runtime)


def load_for_serving(planned: PlannedVariant, threads: int = 1) -> LoadedVariant:
    """Load a variant dir (``tightfit.load_variant``) or a plain HF dir / built-in name for serving on
    ``threads`` threads. An ONNX variant opens an ONNX Runtime session and never imports torch; a torch
    variant runs eager (as the memory model was calibrated)."""
    import os

    source = Path(planned.source)
    manifest = read_manifest(source) if (source / "manifest.json").exists() else None
    if manifest is not None and runtime_of(manifest) == RUNTIME_ONNXRUNTIME:
        return LoadedVariant(plan=planned, runner=load_variant(source, threads=max(1, threads)).runner)
    # bound oneDNN's per-shape kernel cache before torch initialises it (each entry holds packed weights)
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, threads))
    if manifest is not None:
        runner = load_variant(source).runner
        runner.run_eager()
    else:
        loaded = load_model(planned.source, kind=planned.kind)  # type: ignore[arg-type]
        runner = TorchRunner(loaded.model.eval(), loaded.tokenizer, kind=planned.kind)
    if planned.kind == "causal_lm":
        runner.tokenizer.padding_side = "left"
        if runner.tokenizer.pad_token is None:
            runner.tokenizer.pad_token = runner.tokenizer.eos_token
    # what loading freed goes back to the OS: torchao's int8 MiniLM sat at 490-581 MiB after loading in six
    # fresh processes and at 475-476 MiB in every one after the trim (2026-11-27)
    trim_heap()
    return LoadedVariant(plan=planned, runner=runner)


def lru_evictions(held: list[tuple[str, int]], incoming_bytes: int, capacity_bytes: int) -> list[str]:
    """Names to evict, least recently used first, so ``incoming_bytes`` fits beside what stays.

    ``held`` lists (name, predicted resident bytes) from least to most recently used.
    """
    used = sum(size for _name, size in held)
    out = []
    for name, size in held:
        if used + incoming_bytes <= capacity_bytes:
            break
        out.append(name)
        used -= size
    return out


class MultiplexedPool:
    """The replica's variants behind Ray Serve's ``@serve.multiplexed`` LRU, evicted by predicted bytes.

    Serve counts models (``max_num_models_per_replica``) and routes requests carrying a
    ``serve_multiplexed_model_id`` to replicas that hold that model. Counting alone would let three large
    variants overflow the budget, so before each load this pool unloads Serve's least recently used models
    until the summed predicted resident bytes fit ``plan.pool_bytes``. Create it inside a replica.
    """

    def __init__(self, plan: ServePlan, loader: Callable[[PlannedVariant], LoadedVariant], executor: Any) -> None:
        from ray import serve

        self.plan = plan
        self.evictions = 0
        self._resident = {v.name: v.resident_bytes for v in plan.pool}  # predicted bytes per member
        self._loader = loader
        self._executor = executor

        async def load_member(name: str) -> LoadedVariant:
            return await self._load(name)

        self._load_fn = load_member
        self._get = serve.multiplexed(max_num_models_per_replica=plan.max_models_per_replica)(load_member)

    def _serve_lru(self) -> Any:
        """Serve's multiplex wrapper (its ``models`` OrderedDict is the LRU), created on the first get.

        Ray 2.60 keeps it on the decorated function as ``__serve_multiplex_wrapper`` (not a public API; the
        tests pin the behaviour). Without it, eviction falls back to Serve's model count alone."""
        return getattr(self._load_fn, "__serve_multiplex_wrapper", None)

    def names(self) -> list[str]:
        lru = self._serve_lru()
        return list(lru.models) if lru is not None else []

    async def get(self, name: str) -> LoadedVariant:
        """The loaded variant ``name`` (a pool member), loading it through Serve's multiplexer if absent."""
        return await self._get(name)

    async def _load(self, name: str) -> LoadedVariant:
        import asyncio
        import gc

        planned = self.plan.variant(name)
        if planned is None:
            raise RequestError(404, f"unknown variant {name!r}; this server serves {[v.name for v in self.plan.pool]}")
        if planned.resident_bytes > self.plan.pool_bytes:
            raise RequestError(507, f"variant {name!r} needs more memory than this replica's pool holds")
        lru = self._serve_lru()
        if lru is not None:
            held = [(n, self._resident[n]) for n in lru.models]
            evict = lru_evictions(held, planned.resident_bytes, self.plan.pool_bytes)
            for _name in evict:
                await lru.unload_model_lru()
                self.evictions += 1
            if evict:
                gc.collect()  # release the evicted weights before the next variant's load
                trim_heap()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._loader, planned)


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, never more than ``limit`` bytes held (the proxy's rule, ``tightfit.serve.proxy``,
    applied again under the plan's own limit): a declared ``Content-Length`` over the limit is refused before
    a byte is read, a chunked (or lying) body is read with a running cap; both answer 413."""
    try:
        return await read_capped(request.receive, request.headers.get("content-length"), limit)
    except BodyError as exc:
        raise RequestError(exc.status, exc.message) from None


@dataclass
class ParsedRequest:
    """A validated request: which variant, the texts, and for generation the new-token count."""

    variant: PlannedVariant
    texts: list[str]
    max_new_tokens: int = 0


def validate_request(
    raw: bytes, plan: ServePlan, kind: str, header_variant: str | None = None
) -> ParsedRequest:
    """Check size, JSON, fields and variant; raise RequestError(4xx, message) on anything wrong."""
    if len(raw) > plan.max_request_bytes:
        raise RequestError(413, f"payload is {len(raw)} bytes; the limit is {plan.max_request_bytes} bytes")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "body is not valid JSON; send {\"text\": \"...\"}") from None
    if not isinstance(body, dict):
        raise RequestError(422, "body must be a JSON object like {\"text\": \"...\"}")
    known = {"text", "texts", "variant", "max_new_tokens"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(422, f"unknown field(s) {unknown}; allowed: {sorted(known)}")
    name = body.get("variant", header_variant)
    if name is not None and not isinstance(name, str):
        raise RequestError(422, "'variant' must be a string")
    if name:
        variant = plan.variant(name)
        if variant is None:
            served = ", ".join(v.name for v in plan.pool)
            raise RequestError(404, f"unknown variant {name!r}; this server serves: {served}")
        if variant.kind != kind:
            raise RequestError(400, f"variant {name!r} is a {variant.kind}; use the matching endpoint")
    else:
        found = plan.default_for(kind)
        if found is None:
            raise RequestError(404, f"this server has no {kind} variant; it serves {[v.name for v in plan.pool]}")
        variant = found
    if "text" in body and "texts" in body:
        raise RequestError(422, "give either 'text' or 'texts', not both")
    if "texts" in body:
        texts = body["texts"]
        if not isinstance(texts, list) or not texts:
            raise RequestError(422, "'texts' must be a non-empty list of strings")
    elif "text" in body:
        texts = [body["text"]]
    else:
        raise RequestError(422, "missing field 'text' (a non-empty string)")
    if len(texts) > variant.max_batch_size:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {variant.max_batch_size}")
    for text in texts:
        if not isinstance(text, str):
            raise RequestError(422, f"'text' must be a string, got {type(text).__name__}")
        if not text.strip():
            raise RequestError(422, "'text' is empty")
    new_tokens = 0
    if kind == "causal_lm":
        new_tokens = body.get("max_new_tokens", variant.max_new_tokens)
        if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or new_tokens < 1:
            raise RequestError(422, "'max_new_tokens' must be a positive integer")
        if new_tokens > variant.max_new_tokens:
            raise RequestError(
                422, f"max_new_tokens {new_tokens} is over this server's cap of {variant.max_new_tokens}"
            )
    return ParsedRequest(variant=variant, texts=texts, max_new_tokens=new_tokens)


def check_tokens(loaded: LoadedVariant, texts: list[str]) -> None:
    """Refuse any text longer than the variant's per-request token cap (it would break the memory plan)."""
    cap = loaded.plan.max_tokens
    for text in texts:
        n = loaded.runner.count_tokens(text)
        if n > cap:
            raise RequestError(422, f"text has {n} tokens; the limit is {cap} tokens per text")


def seq_bucket(loaded: LoadedVariant, texts: list[str]) -> int:
    """Pad to one of a few lengths (16, 32, 64, ... up to the cap): CPU kernels cache packed weights
    per input shape, so free-running lengths grow the replica's memory with every new shape."""
    longest = max(loaded.runner.count_tokens(t) for t in texts)
    bucket = 16
    while bucket < longest:
        bucket *= 2
    return min(bucket, loaded.plan.max_tokens)


def classify(loaded: LoadedVariant, texts: list[str]) -> list[dict[str, Any]]:
    """Labels and probabilities for a batch of texts (padded to a length bucket, capped at the token cap)."""
    return list(loaded.runner.classify(texts, max_length=seq_bucket(loaded, texts)))


def generate(loaded: LoadedVariant, texts: list[str], max_new_tokens: int) -> list[dict[str, Any]]:
    """Greedy continuations for a batch of prompts (left-padded; KV cache bounded by the plan)."""
    return list(loaded.runner.generate(texts, max_new_tokens=max_new_tokens, max_length=loaded.plan.max_tokens))
