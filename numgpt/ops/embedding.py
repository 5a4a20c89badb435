"""Embedding: out = W[idx]; the backward scatter-adds rows of dout into dW.

Shapes: idx (...) integer, W (V, C), out (..., C).
"""
from typing import NamedTuple

import numpy

from numgpt.autograd import array_of, record
from numgpt.registry import resolve


class EmbeddingCache(NamedTuple):
    idx: numpy.ndarray       # (...) int64
    num_embeddings: int      # V


def check_indices(idx, num_embeddings, what="token id"):
    """Raise a clear error for an index outside [0, num_embeddings) before any kernel sees it."""
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{what}s must be integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= num_embeddings):
        bad = idx[(idx < 0) | (idx >= num_embeddings)].flat[0]
        raise IndexError(f"{what} {bad} is outside the vocabulary [0, {num_embeddings})")


def embedding_forward(idx, weight):
    out = weight[idx]                            # (...) -> (..., C)
    return out, EmbeddingCache(idx, weight.shape[0])


def embedding_backward(dout, cache):
    idx, num_embeddings = cache
    channels = dout.shape[-1]
    # out = weight[idx]
    dweight = numpy.zeros((num_embeddings, channels), dtype=dout.dtype)            # (V, C)
    numpy.add.at(dweight, idx.reshape(-1), dout.reshape(-1, channels))             # rows of (N, C) into (V, C)
    return dweight


def embedding(idx, weight):
    idx = array_of(idx)
    check_indices(idx, weight.shape[0])
    forward, backward = resolve(embedding_forward, embedding_backward)
    out, cache = forward(idx, weight.data)
    return record(out, (weight,), lambda dout: (backward(dout, cache),), "embedding")
