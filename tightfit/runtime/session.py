"""Run an ONNX variant: an ONNX Runtime session with a set thread count behind the ``Runner`` interface.
Imports onnxruntime, tokenizers and numpy only (never torch or transformers), so a replica serving an
ONNX variant stays small and starts in well under a second.

Providers: on a machine with a GPU the session uses ONNX Runtime's CUDA execution provider. When the
installed onnxruntime has none (the CPU wheel), an explicit ``device="cuda"`` is an error and the automatic
choice warns that the variant runs on CPU; a session that silently fell back to CPU is an error too.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from tightfit.device import gpu_visible
from tightfit.errors import UnsupportedError, VariantError
from tightfit.names import RUNTIME_ONNXRUNTIME
from tightfit.runtime.base import Runner, labels_from_config
from tightfit.runtime.manifest import verify_variant
from tightfit.runtime.text import TextTokenizer

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
GPU_WHEEL_FIX = ("install onnxruntime-gpu (ONNX Runtime's CUDA build, same API) in place of onnxruntime, or load "
                 "with device='cpu' to run on the CPU on purpose")


def default_threads() -> int:
    """Intra-op threads when none are given: ``TIGHTFIT_THREADS``, else the cores this process may use."""
    from tightfit.device import cpu_threads

    return max(1, int(os.environ.get("TIGHTFIT_THREADS", "0")) or cpu_threads())


def choose_providers(device: str | None) -> tuple[list[str], str]:
    """(execution providers, device) for ``device`` (None/"auto": the GPU where one is visible)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    wanted = (device or "auto").split(":", 1)[0]
    if wanted == "auto":
        wanted = "cuda" if gpu_visible() else "cpu"
        if wanted == "cuda" and CUDA_PROVIDER not in available:
            warnings.warn(f"a GPU is visible but onnxruntime has no CUDA provider: this ONNX variant runs on the "
                          f"CPU; {GPU_WHEEL_FIX}", RuntimeWarning, stacklevel=3)
            wanted = "cpu"
    if wanted == "cuda":
        if CUDA_PROVIDER not in available:
            raise UnsupportedError(f"device cuda was asked for but onnxruntime offers {available}; {GPU_WHEEL_FIX}")
        index = int(device.split(":", 1)[1]) if device and ":" in device else 0
        return [CUDA_PROVIDER, CPU_PROVIDER], f"cuda:{index}"
    if wanted != "cpu":
        raise UnsupportedError(f"ONNX variants run on cpu or cuda, not {device!r}")
    return [CPU_PROVIDER], "cpu"


def session_options(threads: int) -> Any:
    """Sequential execution on ``threads`` intra-op threads, all graph optimizations, no spinning threads
    (a replica shares its node; idle spinning would burn the CPUs the plan gave to others)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def open_session(path: Path, *, threads: int, device: str | None) -> tuple[Any, str]:
    """An ``InferenceSession`` on the chosen providers; refuses one that fell back to CPU unasked."""
    import onnxruntime

    providers, chosen = choose_providers(device)
    options: list[Any] = [{"device_id": int(chosen.split(":")[1])}, {}] if chosen.startswith("cuda") else [{}]
    try:
        session = onnxruntime.InferenceSession(str(path), session_options(threads), providers=providers,
                                               provider_options=options)
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise VariantError(f"ONNX Runtime cannot load {path}: {type(exc).__name__}: {exc}") from None
    if chosen.startswith("cuda") and session.get_providers()[0] != CUDA_PROVIDER:
        raise UnsupportedError(f"ONNX Runtime fell back to {session.get_providers()} for {path} instead of CUDA "
                               "(CUDA or cuDNN libraries missing?); fix the CUDA install or load with device='cpu'")
    return session, chosen


class OrtRunner(Runner):
    """An ONNX variant in an ONNX Runtime session (``input_ids``, ``attention_mask`` -> ``logits``)."""

    runtime = RUNTIME_ONNXRUNTIME

    def __init__(self, path: Path, tokenizer: TextTokenizer, *, kind: str, labels: list[str], threads: int,
                 device: str | None = None) -> None:
        self.tokenizer, self.kind, self.labels, self.threads = tokenizer, kind, labels, threads
        self.session, self.device = open_session(path, threads=threads, device=device)
        self.providers = list(self.session.get_providers())
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        # a decoder graph with its KV cache (past.{i}.key/value in, present.* out); older graphs have none
        self.past = [i for i in self.session.get_inputs() if i.name.startswith("past.")]
        if kind == "causal_lm":
            tokenizer.padding_side = "left"

    def encode(self, texts: list[str], *, max_length: int, pad_to_max: bool = True) -> dict[str, Any]:
        return self.tokenizer.encode(list(texts), max_length=max_length, pad_to_max=pad_to_max)

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        return self.logits(input_ids, attention_mask)

    def logits(self, input_ids: Any, attention_mask: Any, position_ids: Any = None, logits_to_keep: int = 0) -> Any:
        """Logits of a whole sequence (a decoder's: of its last ``logits_to_keep`` positions when > 0), with
        an empty KV cache; positions count real tokens unless given."""
        return self._run(input_ids, attention_mask, position_ids, logits_to_keep, None)[0]

    def _run(self, input_ids: Any, attention_mask: Any, position_ids: Any, keep: int, past: list[Any] | None) -> Any:
        """One session run: (logits, *present) for a decoder with a cache, (logits,) otherwise."""
        import numpy as np

        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        if "position_ids" in self.input_names:  # decoders: positions count real tokens (left padding)
            feeds["position_ids"] = position_ids if position_ids is not None else np.maximum(
                np.cumsum(attention_mask, axis=-1) - 1, 0)[:, -input_ids.shape[1]:]
        if "logits_to_keep" in self.input_names:
            feeds["logits_to_keep"] = np.array(keep if keep > 0 else input_ids.shape[1], dtype=np.int64)
        if self.past:
            empty = [np.zeros((len(input_ids), i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in self.past]
            feeds.update(zip((i.name for i in self.past), past if past is not None else empty, strict=True))
            return self.session.run(None, {k: feeds[k] for k in self.input_names})
        return self.session.run([self.output_name], {k: feeds[k] for k in self.input_names})

    def to_numpy(self, logits: Any) -> Any:
        return logits

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count_tokens(text)

    def generate(self, texts: list[str], *, max_new_tokens: int, max_length: int) -> list[dict[str, Any]]:
        """Greedy decoding of left-padded prompts, stopping at EOS."""
        if self.kind != "causal_lm":
            return super().generate(texts, max_new_tokens=max_new_tokens, max_length=max_length)
        enc = self.encode(list(texts), max_length=max_length, pad_to_max=False)
        new = self.generate_ids(enc["input_ids"], enc["attention_mask"], max_new_tokens)
        return [{"text": self.tokenizer.decode(row), "new_tokens": len(row)} for row in new]

    def generate_ids(self, ids: Any, mask: Any, max_new_tokens: int, *, stop_at_eos: bool = True) -> list[list[int]]:
        """The new token ids of greedy decoding (EOS not included). With the graph's KV cache each new token
        runs one position against the cache; a graph without one re-runs the whole sequence every token."""
        import numpy as np

        eos = self.tokenizer.eos_token_id if stop_at_eos else None
        pad = self.tokenizer.pad_token_id or 0
        done = np.zeros(len(ids), dtype=bool)
        new: list[list[int]] = [[] for _ in range(len(ids))]
        positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
        step_ids, past = ids, None
        for _ in range(max_new_tokens):
            out = self._run(step_ids, mask, positions[:, -step_ids.shape[1]:], 1, past)
            nxt = np.where(done, pad, out[0][:, -1, :].argmax(axis=-1).astype(np.int64))
            for i in np.flatnonzero(~done):
                if eos is None or int(nxt[i]) != eos:
                    new[i].append(int(nxt[i]))
            if eos is not None:
                done |= nxt == eos
            mask = np.concatenate([mask, np.ones((len(ids), 1), dtype=np.int64)], axis=1)
            positions = np.concatenate([positions, positions[:, -1:] + 1], axis=1)
            if self.past:
                step_ids, past = nxt[:, None], list(out[1:])
            else:
                step_ids = np.concatenate([step_ids, nxt[:, None]], axis=1)
            if done.all():
                break
        return new


def load_onnx_runner(path: Path, manifest: dict[str, Any] | None = None, *, device: str | None = None,
                     threads: int | None = None) -> OrtRunner:
    """The runner of an ONNX variant directory (verified here unless its verified ``manifest`` is given)."""
    path = Path(path)
    manifest = manifest if manifest is not None else verify_variant(path)
    if manifest.get("runtime") != RUNTIME_ONNXRUNTIME:
        raise VariantError(f"{path} runs on {manifest.get('runtime') or 'torch'}, not ONNX Runtime; use load_variant")
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return OrtRunner(path / manifest["weights"]["file"], TextTokenizer(path), kind=str(manifest["kind"]),
                     labels=labels_from_config(config), threads=threads or default_threads(), device=device)
