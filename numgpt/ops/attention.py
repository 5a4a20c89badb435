"""The causal multi-head attention core, from the fused query/key/value
projection to the merged heads (the part of the seed's MultiHeadAttention
between the projections and ``out_proj``).

Shapes: qkv (B, T, 3C) holding queries, keys and values side by side;
NH heads of HS = C / NH channels; att and scores (B, NH, T, T); out (B, T, C).
Dropout on the attention weights takes a precomputed DropoutMask, so that
the NumPy path and the numba kernel see the same random numbers.
"""
from typing import NamedTuple, Optional

import numpy

from numgpt import backend
from numgpt.autograd import record
from numgpt.ops.dropout import DropoutMask, dropout_mask


class AttentionCache(NamedTuple):
    qkv: numpy.ndarray                  # (B, T, 3C)
    att: numpy.ndarray                  # (B, NH, T, T) softmax weights, before dropout
    mask: Optional[DropoutMask]         # keep (B, NH, T, T) and scale, or None
    n_heads: int


def split_heads(qkv, n_heads):
    """(B, T, 3C) -> three views (B, NH, T, HS)."""
    B, T, C3 = qkv.shape
    HS = C3 // (3 * n_heads)
    heads = qkv.reshape(B, T, 3, n_heads, HS)                      # (B, T, 3, NH, HS)
    return [heads[:, :, i].transpose(0, 2, 1, 3) for i in range(3)]


def attention_forward(qkv, n_heads, mask=None):
    B, T, C3 = qkv.shape
    q, k, v = split_heads(qkv, n_heads)                            # 1. 3 x (B, NH, T, HS)
    scale = qkv.dtype.type(1.0 / numpy.sqrt(q.shape[-1]))
    scores = (q @ k.swapaxes(-1, -2)) * scale                      # 2. (B, NH, T, T)
    future = numpy.triu(numpy.ones((T, T), dtype=bool), k=1)
    scores[..., future] = -numpy.inf                               # 3. causal mask
    scores -= scores.max(axis=-1, keepdims=True)                   # 4. softmax
    att = numpy.exp(scores)
    att /= att.sum(axis=-1, keepdims=True)
    att_dropped = att if mask is None else mask.apply(att)         # 5. dropout on weights
    y = att_dropped @ v                                            # 6. (B, NH, T, T) @ (B, NH, T, HS) -> (B, NH, T, HS)
    out = y.transpose(0, 2, 1, 3).reshape(B, T, C3 // 3)           # 7. (B, NH, T, HS) -> (B, T, C)
    return out, AttentionCache(qkv, att, mask, n_heads)


def attention_backward(dout, cache):
    qkv, att, mask, n_heads = cache
    B, T, C3 = qkv.shape
    q, k, v = split_heads(qkv, n_heads)
    HS = q.shape[-1]
    scale = qkv.dtype.type(1.0 / numpy.sqrt(HS))
    dqkv = numpy.empty_like(qkv)
    dq, dk, dv = split_heads(dqkv, n_heads)
    # 7. out = y.transpose(0, 2, 1, 3).reshape(B, T, C)
    dy = dout.reshape(B, T, n_heads, HS).transpose(0, 2, 1, 3)     # (B, NH, T, HS)
    # 6. y = att_dropped @ v
    att_dropped = att if mask is None else mask.apply(att)
    dv[...] = att_dropped.swapaxes(-1, -2) @ dy                    # (B, NH, T, HS)
    datt = dy @ v.swapaxes(-1, -2)                                 # (B, NH, T, T)
    # 5. att_dropped = att * keep * scale
    if mask is not None:
        datt = mask.apply(datt)
    # 4. att = softmax(scores): dscores = att * (datt - sum(datt * att))
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    # 3. masked scores are constants: att is 0 there, so dscores is already 0
    # 2. scores = q @ k^T * scale
    dscores *= scale
    dq[...] = dscores @ k                                          # (B, NH, T, HS)
    dk[...] = dscores.swapaxes(-1, -2) @ q                         # (B, NH, T, HS)
    return dqkv


def causal_attention(qkv, n_heads, dropout_p=0.0, training=False):
    """Scaled dot-product attention with a causal mask over fused (B, T, 3C) projections."""
    B, T, C3 = qkv.shape
    if C3 % (3 * n_heads):
        raise ValueError(f"qkv width {C3} is not 3 x n_heads ({n_heads}) x head size")
    mask = None
    if training and dropout_p > 0.0:
        mask = dropout_mask((B, n_heads, T, T), dropout_p)
    out, cache = backend.dispatch(attention_forward)(qkv.data, n_heads, mask)
    backward = backend.dispatch(attention_backward)
    return record(out, (qkv,), lambda dout: (backward(dout, cache),))


# ---------------------------------------------------------------- inference with a KV cache
class LayerKVCache:
    """One layer's keys and values of the positions seen so far.

    Shapes: keys, values (B, NH, L, HS), L the longest sequence the cache holds;
    positions [0, length) are filled.
    """

    def __init__(self, batch, n_heads, max_len, head_dim, dtype):
        self.keys = numpy.empty((batch, n_heads, max_len, head_dim), dtype=dtype)
        self.values = numpy.empty((batch, n_heads, max_len, head_dim), dtype=dtype)
        self.length = 0


def cached_attention_forward(qkv, n_heads, cache):
    """Attention of Tn new positions over the cached ones and themselves, causal.

    Inference only (no backward). qkv (B, Tn, 3C) -> out (B, Tn, C); appends
    the new keys and values to ``cache``.
    """
    B, Tn, C3 = qkv.shape
    start, end = cache.length, cache.length + Tn
    if end > cache.keys.shape[2]:
        raise ValueError(f"KV cache holds {cache.keys.shape[2]} positions, {end} were asked for")
    q, k, v = split_heads(qkv, n_heads)                            # 3 x (B, NH, Tn, HS)
    cache.keys[:, :, start:end] = k
    cache.values[:, :, start:end] = v
    cache.length = end
    keys, values = cache.keys[:, :, :end], cache.values[:, :, :end]
    scale = qkv.dtype.type(1.0 / numpy.sqrt(q.shape[-1]))
    scores = (q @ keys.swapaxes(-1, -2)) * scale                   # (B, NH, Tn, end)
    future = numpy.arange(end)[None, :] > numpy.arange(start, end)[:, None]   # (Tn, end)
    scores[..., future] = -numpy.inf
    scores -= scores.max(axis=-1, keepdims=True)
    att = numpy.exp(scores)
    att /= att.sum(axis=-1, keepdims=True)
    y = att @ values                                               # (B, NH, Tn, HS)
    return y.transpose(0, 2, 1, 3).reshape(B, Tn, C3 // 3)         # (B, Tn, C)


def cached_attention(qkv, n_heads, cache):
    """The tape wrapper: refuses to run where a gradient is wanted."""
    if qkv.requires_grad:
        raise RuntimeError("attention with a KV cache is for inference: run it under numgpt.no_grad()")
    return record(cached_attention_forward(qkv.data, n_heads, cache), (qkv,), None)
