"""The predict interface every runtime gives (``Runner``): what measurement, the Serve replica, the MLflow
pyfunc model and evaluation call, whether a variant runs on torch or on ONNX Runtime.

``encode`` texts to the runtime's arrays, ``forward`` one batch to logits, ``classify_logits`` a list of texts
in fixed-shape batches (the evaluation protocol), ``classify`` a served batch, ``generate`` for decoders.
The torch runner lives in ``compress/runtime.py``; the ONNX Runtime runner in ``session.py`` beside this file.
"""

from __future__ import annotations

from typing import Any


def labels_from_config(config: dict[str, Any] | Any) -> list[str]:
    """Class names by id from an HF config (dict or object); ``["0", "1"]`` when it names none."""
    id2label = config.get("id2label") if isinstance(config, dict) else getattr(config, "id2label", None)
    if not id2label:
        return ["0", "1"]
    by_id = {int(k): str(v) for k, v in dict(id2label).items()}
    return [by_id.get(i, str(i)) for i in range(max(by_id) + 1)]


def softmax(logits: Any) -> Any:
    """Row-wise softmax of a numpy array (float32)."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float32)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class Runner:
    """The predict interface of a loaded variant, the same for every runtime."""

    runtime: str = ""
    kind: str = "classifier"
    device: str = "cpu"
    threads: int = 1
    labels: list[str]

    def encode(self, texts: list[str], *, max_length: int, pad_to_max: bool = True) -> dict[str, Any]:
        """``input_ids`` and ``attention_mask`` in the runtime's array type, ready for ``forward``."""
        raise NotImplementedError

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        """One batch through the model; the logits in the runtime's array type (timed by the profiler)."""
        raise NotImplementedError

    def to_numpy(self, logits: Any) -> Any:
        """Logits as a float32 numpy array."""
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Tokens of one text, special tokens included, untruncated."""
        raise NotImplementedError

    def generate(self, texts: list[str], *, max_new_tokens: int, max_length: int) -> list[dict[str, Any]]:
        """Greedy continuations (decoders): ``[{"text": ..., "new_tokens": n}, ...]``."""
        raise NotImplementedError(f"{self.runtime} runner of a {self.kind} does not generate")

    def classify_logits(self, texts: list[str], *, max_length: int = 64, batch_size: int = 32) -> Any:
        """Float32 logits ``[len(texts), labels]``: batches of exactly ``batch_size`` texts (the last one
        filled with copies of its first text, dropped from the output) padded to ``max_length`` tokens, so
        a compiled or fixed-shape runtime sees one shape (the evaluation protocol of every runtime)."""
        import numpy as np

        outs = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            real = len(chunk)
            chunk += [chunk[0]] * (batch_size - real)
            logits = self.to_numpy(self.forward(**self.encode(chunk, max_length=max_length)))
            outs.append(logits[:real])
        return np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), dtype=np.float32)

    def classify(self, texts: list[str], *, max_length: int) -> list[dict[str, Any]]:
        """Label, label id and probability per text of one served batch (padded to ``max_length``)."""
        probs = softmax(self.to_numpy(self.forward(**self.encode(texts, max_length=max_length))))
        out = []
        for row in probs:
            idx = int(row.argmax())
            label = self.labels[idx] if idx < len(self.labels) else str(idx)
            out.append({"label": label, "label_id": idx, "score": round(float(row[idx]), 5)})
        return out
