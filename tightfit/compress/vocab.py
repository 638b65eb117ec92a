"""Vocabulary pruning support: word embeddings for the tokens a corpus uses, behind the same token ids.

MiniLM's word embeddings (30,522 x 384) are half its parameters, yet a task corpus uses a fraction of the
vocabulary (Rotten Tomatoes' training reviews use about 13k WordPiece tokens). ``RemappedEmbedding`` keeps
only those rows and maps the tokenizer's ids to them through a small index buffer, so the tokenizer, the
HTTP API and the teacher in distillation all keep the original ids; a token the corpus never used reads
the ``[UNK]`` row. The ``prune_vocab`` method (``prune.py``) builds it; ``load_variant`` re-creates it from
the kept-row count in the manifest before the weights load.
"""

from __future__ import annotations

from typing import Any

import torch


class RemappedEmbedding(torch.nn.Module):
    """An ``nn.Embedding`` over kept rows, indexed through ``id_map`` (original token id -> kept row)."""

    id_map: torch.Tensor

    def __init__(self, id_map: torch.Tensor, embedding: torch.nn.Embedding) -> None:
        super().__init__()
        self.register_buffer("id_map", id_map.to(torch.int32))
        self.embedding = embedding

    @property
    def weight(self) -> torch.Tensor:
        """The kept rows (for code that reads ``get_input_embeddings().weight``)."""
        return self.embedding.weight

    @property
    def num_embeddings(self) -> int:
        """The original vocabulary size: the ids this module accepts."""
        return int(self.id_map.numel())

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding.embedding_dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.id_map[input_ids].long())


def word_embeddings_owner(model: Any) -> Any | None:
    """The module holding ``word_embeddings`` (BERT-style ``base_model.embeddings``), or None."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    return embeddings if hasattr(embeddings, "word_embeddings") else None


def remap_vocabulary(model: Any, keep_ids: torch.Tensor, unk_id: int, pad_id: int | None = None) -> int:
    """Replace the word embeddings by the rows of the original ids ``keep_ids`` (sorted, unique, holding
    ``unk_id``). Ids outside ``keep_ids`` map to the ``[UNK]`` row. Returns the number of kept rows."""
    owner = word_embeddings_owner(model)
    if owner is None:
        raise ValueError("model has no base_model.embeddings.word_embeddings")
    old = owner.word_embeddings
    if isinstance(old, RemappedEmbedding):  # pruning twice composes: keep_ids are original ids
        weight = old.embedding.weight.detach()[old.id_map.long()[keep_ids]]
    else:
        weight = old.weight.detach()[keep_ids]
    new_index = torch.full((old.num_embeddings,), -1, dtype=torch.long)
    new_index[keep_ids] = torch.arange(len(keep_ids))
    new_index[new_index < 0] = new_index[unk_id]
    padding_idx = int(new_index[pad_id]) if pad_id is not None and pad_id in keep_ids else None
    embedding = torch.nn.Embedding(len(keep_ids), weight.shape[1], padding_idx=padding_idx, dtype=weight.dtype)
    with torch.no_grad():
        embedding.weight.copy_(weight)
    owner.word_embeddings = RemappedEmbedding(new_index, embedding)
    return len(keep_ids)


def read_vocab_rows(model: Any) -> int | None:
    """Kept word-embedding rows of a vocabulary-pruned model (None when the vocabulary is whole)."""
    owner = word_embeddings_owner(model)
    if owner is None or not isinstance(owner.word_embeddings, RemappedEmbedding):
        return None
    return int(owner.word_embeddings.embedding.num_embeddings)


def apply_vocab_rows(model: Any, rows: int) -> None:
    """Give a fresh model an empty ``RemappedEmbedding`` of ``rows`` kept rows (weights load after)."""
    owner = word_embeddings_owner(model)
    if owner is None:
        raise ValueError("the manifest records a pruned vocabulary but the model has no word embeddings")
    old = owner.word_embeddings
    embedding = torch.nn.Embedding(rows, old.embedding_dim, dtype=old.weight.dtype)
    id_map = torch.zeros(int(old.num_embeddings), dtype=torch.int32)
    owner.word_embeddings = RemappedEmbedding(id_map, embedding)
