"""Embedding: out = W[idx]; the backward scatter-adds rows of dout into dW.

Shapes: idx (...) integer, W (V, C), out (..., C); N = idx.size, the
positions once idx is flattened, so out is (N, C) row by row:

    1. out[n] = W[idx[n]]                  (N,) -> (N, C), a row copied, no arithmetic

It is Linear with a one-hot input: out = one_hot(idx) @ W, (N, V) @ (V, C).
So, as in Linear, dW = one_hot(idx).T @ dout, (V, N) @ (N, C); written out,

    dL/dW[v, c] = sum over the n with idx[n] = v of dout[n, c]

Backward:

    1. dW starts at zeros (V, C): a row no position used gets no gradient;
       then row n of dout is added into row idx[n] of dW. This is the
       one-hot product without forming the (N, V) one-hot matrix.

Why add, and why numpy.add.at. A token that appears twice (idx = [3, 3])
used W[3] twice, so W[3] gets both gradients: dW[3] = dout[0] + dout[1],
the fan-out sum of the autograd again. Assignment (dW[idx] = dout) keeps
only the last row, and so does dW[idx] += dout: NumPy's fancy-index +=
reads dW[idx] once, adds, and writes back, so the repeats overwrite each
other. numpy.add.at is unbuffered: every (index, row) pair is added.

idx is an integer index, not a function of any parameter: it gets no gradient.
"""
from typing import NamedTuple

import numpy

from numgpt.autograd import array_of, record
from numgpt.device import array_module, is_host, like
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
    out = weight[idx]                            # 1. (...) -> (..., C)
    return out, EmbeddingCache(idx, weight.shape[0])


def embedding_backward(dout, cache):
    idx, num_embeddings = cache
    channels = dout.shape[-1]
    # 1. out = weight[idx]: scatter-ADD each row of dout into row idx[n] (repeats sum)
    xp = array_module(dout)
    dweight = xp.zeros((num_embeddings, channels), dtype=dout.dtype)               # (V, C)
    xp.add.at(dweight, idx.reshape(-1), dout.reshape(-1, channels))                # rows of (N, C) into (V, C)
    return dweight


def embedding(idx, weight):
    """weight[idx]. Host indices are checked, then moved to the weight's device (the one
    place token ids enter a device); indices already on a device are not checked."""
    idx = array_of(idx)
    if is_host(idx):
        check_indices(idx, weight.shape[0])
        idx = like(idx, weight.data)
    forward, backward = resolve(embedding_forward, embedding_backward, weight.data)
    out, cache = forward(idx, weight.data)
    return record(out, (weight,), lambda dout: (backward(dout, cache),), "embedding")
