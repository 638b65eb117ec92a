"""The tokenizer of an ONNX variant, read from ``tokenizer.json`` with the ``tokenizers`` library alone (no
transformers, no torch), giving the same ids as the transformers tokenizer the variant was built with.

Padding and truncation follow transformers' ``padding="max_length"`` / ``padding=True`` and
``truncation=True, max_length=n``: special tokens are added first and count toward ``max_length``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tightfit.errors import VariantError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json (a string, or ``{"content": ...}``)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class TextTokenizer:
    """``tokenizers.Tokenizer`` with the variant's special tokens; arrays out, int64, ``[batch, length]``."""

    def __init__(self, directory: str | Path) -> None:
        from tokenizers import Tokenizer

        root = Path(directory)
        file = root / TOKENIZER_FILE
        if not file.is_file():
            raise VariantError(f"{root} has no {TOKENIZER_FILE}; rebuild the variant with a fast tokenizer")
        self._tok = Tokenizer.from_file(str(file))
        self._tok.no_padding()
        self._tok.no_truncation()
        self._lock = threading.Lock()
        self._truncation: int | None = None
        config_file = root / TOKENIZER_CONFIG
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.eos_token = _token_text(config.get("eos_token"))
        pad = _token_text(config.get("pad_token")) or self.eos_token
        self.pad_token_id = self._tok.token_to_id(pad) if pad else None
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.padding_side = "right"

    def _encode(self, texts: list[str], max_length: int | None) -> list[list[int]]:
        with self._lock:
            if max_length != self._truncation:
                if max_length is None:
                    self._tok.no_truncation()
                else:
                    self._tok.enable_truncation(max_length)
                self._truncation = max_length
            return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=True)]

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` with its special tokens, untruncated."""
        return len(self._encode([text], None)[0])

    def encode(self, texts: list[str], *, max_length: int, pad_to_max: bool = True) -> dict[str, Any]:
        """``input_ids`` and ``attention_mask`` (int64), truncated to ``max_length`` and padded to it (or to
        the longest text), on ``padding_side``."""
        import numpy as np

        rows = self._encode(texts, max_length)
        width = max_length if pad_to_max else max((len(r) for r in rows), default=1)
        if self.pad_token_id is None and any(len(r) < width for r in rows):
            raise VariantError("this tokenizer has no pad token; send texts one at a time")
        ids = np.full((len(rows), width), self.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            n = len(row)
            cols = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
            ids[i, cols] = row
            mask[i, cols] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))
