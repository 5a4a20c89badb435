"""Causal multi-head attention, between the query/key/value projections and
``out_proj`` (the core of the seed's MultiHeadAttention).

Shapes: q, k, v (B, T, C), split into NH heads of HS = C / NH channels;
scores and att (B, NH, T, T); out (B, T, C).

Forward, per head (q, k, v now (T, HS)):

    1. split heads     (B, T, C) -> (B, NH, T, HS)
    2. scores = q k^T / sqrt(HS)                   (T, T)
    3. causal mask     scores[t, t2] = -inf for t2 > t (a position sees only the past)
    4. att = softmax(scores) along each row
    5. dropout on att  (training only): att_dropped = att * keep / (1 - p)
    6. y = att_dropped v                           (T, HS)
    7. merge heads     (B, NH, T, HS) -> (B, T, C)

Backward, the same steps in reverse:

    7. dy is dout with its heads split again (a reshape has no arithmetic).
    6. y = A v with A = att_dropped, a matrix product as in Linear:
           dA = dy v^T   (T, T)        dv = A^T dy   (T, HS)
    5. A = att * keep * scale:  datt = dA * keep * scale (the same mask).
    4. The softmax of one row s: a_j = exp(s_j) / sum_m exp(s_m). Its
       Jacobian is  da_j/ds_i = a_j (delta_ij - a_i), so for the row
           ds_i = sum_j datt_j da_j/ds_i = a_i (datt_i - sum_j datt_j a_j)
       i.e. ds = att * (datt - rowsum(datt * att)): a vector-Jacobian
       product in O(T) per row, without ever forming the T x T Jacobian.
    3. A masked score is a constant (-inf), not a function of q or k: it
       needs no gradient. Its weight a_j = exp(-inf) = 0, so step 4 already
       gives ds_j = 0 there, and dq, dk below receive nothing from the future.
    2. scores = q k^T * c, c = 1/sqrt(HS), again a matrix product:
           dq = ds k * c   (T, HS)     dk = ds^T q * c   (T, HS)
    1. dq, dk, dv get their heads merged back to (B, T, C).

Dropout takes a precomputed DropoutMask, so that the reference and the numba
twin see the same random numbers.

Grouped-query attention (Llama 3, SmolLM2, Qwen): k and v have fewer heads,
NKV, than q, NH = NKV * G; query head h reads key/value head h // G (Hugging
Face's order). ``repeat_kv`` copies each key/value head G times before the
core above, and its backward is that of any copy used G times (fan-out): the
gradient of a key/value head is the sum of its G copies' gradients,

    repeat_kv   x (B, T, NKV * HS) -> (B, T, NH * HS),  head h = x's head h // G
                dx[kv] = sum over g < G of dout[kv * G + g]

The KV cache of generation keeps only the NKV heads (``LayerKVCache``) and
groups the queries instead: no copies are made there.
"""
import math
from typing import NamedTuple, Optional

import numpy

from numgpt.autograd import record
from numgpt.device import array_module
from numgpt.ops.dropout import DropoutMask, dropout_mask
from numgpt.registry import resolve


class AttentionCache(NamedTuple):
    q: numpy.ndarray                    # (B, NH, T, HS)
    k: numpy.ndarray                    # (B, NH, T, HS)
    v: numpy.ndarray                    # (B, NH, T, HS)
    att: numpy.ndarray                  # (B, NH, T, T) softmax weights, before dropout
    mask: Optional[DropoutMask]         # keep (B, NH, T, T) and scale, or None


def split_heads(x, n_heads):
    """(B, T, C) -> (B, NH, T, HS), a view."""
    B, T, C = x.shape
    return x.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, NH, T, HS) -> (B, T, C)."""
    B, NH, T, HS = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, NH * HS)


def attention_forward(q, k, v, n_heads, mask=None):
    xp, T = array_module(q), q.shape[1]
    q, k, v = (split_heads(x, n_heads) for x in (q, k, v))        # 1. 3 x (B, NH, T, HS)
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    scores = (q @ k.swapaxes(-1, -2)) * scale                      # 2. (B, NH, T, T)
    future = xp.triu(xp.ones((T, T), dtype=bool), k=1)
    scores[..., future] = -math.inf                                # 3. causal mask
    scores -= scores.max(axis=-1, keepdims=True)                   # 4. softmax (shifted: exp never overflows)
    att = xp.exp(scores)
    att /= att.sum(axis=-1, keepdims=True)
    att_dropped = att if mask is None else mask.apply(att)         # 5. dropout on the weights
    y = att_dropped @ v                                            # 6. (B, NH, T, T) @ (B, NH, T, HS)
    return merge_heads(y), AttentionCache(q, k, v, att, mask)      # 7. (B, NH, T, HS) -> (B, T, C)


def attention_backward(dout, cache):
    q, k, v, att, mask = cache
    n_heads = q.shape[1]
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    # 7. out = merge_heads(y)
    dy = split_heads(dout, n_heads)                                # (B, NH, T, HS)
    # 6. y = att_dropped @ v
    att_dropped = att if mask is None else mask.apply(att)
    dv = att_dropped.swapaxes(-1, -2) @ dy                         # (B, NH, T, HS)
    datt = dy @ v.swapaxes(-1, -2)                                 # (B, NH, T, T)
    # 5. att_dropped = att * keep * scale
    if mask is not None:
        datt = mask.apply(datt)
    # 4. att = softmax(scores): dscores = att * (datt - rowsum(datt * att))
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    # 3. masked scores are constants: att is 0 there, so dscores is already 0
    # 2. scores = q @ k^T * scale
    dscores *= scale
    dq = dscores @ k                                               # (B, NH, T, HS)
    dk = dscores.swapaxes(-1, -2) @ q                              # (B, NH, T, HS)
    # 1. split heads
    return merge_heads(dq), merge_heads(dk), merge_heads(dv)       # 3 x (B, T, C)


class RepeatKVCache(NamedTuple):
    n_kv_heads: int
    n_rep: int


def repeat_kv_forward(x, n_kv_heads, n_rep):
    """x (B, T, NKV * HS) -> (B, T, NKV * n_rep * HS): each head n_rep times in a row."""
    B, T, C = x.shape
    HS = C // n_kv_heads
    heads = x.reshape(B, T, n_kv_heads, 1, HS)                                   # (B, T, NKV, 1, HS)
    repeated = array_module(x).broadcast_to(heads, (B, T, n_kv_heads, n_rep, HS))
    return repeated.reshape(B, T, C * n_rep), RepeatKVCache(n_kv_heads, n_rep)   # a copy: (B, T, NH * HS)


def repeat_kv_backward(dout, cache):
    """dout (B, T, NH * HS) -> dx (B, T, NKV * HS): the sum over each head's n_rep copies."""
    B, T, C = dout.shape
    n_kv_heads, n_rep = cache
    copies = dout.reshape(B, T, n_kv_heads, n_rep, C // (n_kv_heads * n_rep))    # (B, T, NKV, G, HS)
    return (copies.sum(axis=3).reshape(B, T, C // n_rep),)


def repeat_kv(x, n_kv_heads, n_rep):
    forward, backward = resolve(repeat_kv_forward, repeat_kv_backward, x.data)
    out, cache = forward(x.data, n_kv_heads, n_rep)
    return record(out, (x,), lambda dout: backward(dout, cache), "repeat_kv")


def _check_heads(q, k, v, n_heads, n_kv_heads):
    B, T, C = q.shape
    if (C % n_heads or n_heads % n_kv_heads or k.shape != (B, T, C // n_heads * n_kv_heads)
            or v.shape != k.shape):
        raise ValueError(f"attention needs q (B, T, NH * HS) and k, v (B, T, NKV * HS) with NH = {n_heads} a "
                         f"multiple of NKV = {n_kv_heads}; got {q.shape}, {k.shape}, {v.shape}")


def causal_attention(q, k, v, n_heads, dropout_p=0.0, training=False, n_kv_heads=None):
    """Scaled dot-product attention with a causal mask: q (B, T, NH * HS), k, v
    (B, T, NKV * HS) -> (B, T, NH * HS). ``n_kv_heads`` (default n_heads) below
    n_heads is grouped-query attention."""
    n_kv_heads = n_kv_heads or n_heads
    _check_heads(q, k, v, n_heads, n_kv_heads)
    if n_kv_heads != n_heads:
        k, v = repeat_kv(k, n_kv_heads, n_heads // n_kv_heads), repeat_kv(v, n_kv_heads, n_heads // n_kv_heads)
    B, T, C = q.shape
    mask = None
    if training and dropout_p > 0.0:
        mask = dropout_mask((B, n_heads, T, T), dropout_p, like=q.data)
    forward, backward = resolve(attention_forward, attention_backward, q.data)
    out, cache = forward(q.data, k.data, v.data, n_heads, mask)
    return record(out, (q, k, v), lambda dout: backward(dout, cache), "attention")


# ---------------------------------------------------------------- inference with a KV cache
class LayerKVCache:
    """One layer's keys and values of the positions seen so far.

    Shapes: keys, values (B, NKV, L, HS), NKV the key/value heads (all heads
    but in grouped-query attention), L the longest sequence the cache holds;
    positions [0, length) are filled.
    """

    def __init__(self, batch, n_heads, max_len, head_dim, dtype, xp=numpy):
        self.keys = xp.empty((batch, n_heads, max_len, head_dim), dtype=dtype)
        self.values = xp.empty((batch, n_heads, max_len, head_dim), dtype=dtype)
        self.length = 0


def cached_attention_forward(q, k, v, n_heads, cache, n_kv_heads=None):
    """Attention of Tn new positions over the cached ones and themselves, causal.

    Inference only (no backward). q (B, Tn, NH * HS), k, v (B, Tn, NKV * HS)
    -> out (B, Tn, NH * HS); appends the new keys and values to ``cache``. The
    G = NH / NKV query heads of a group share one cached key/value head.
    """
    n_kv_heads = n_kv_heads or n_heads
    B, Tn = q.shape[:2]
    start, end = cache.length, cache.length + Tn
    if end > cache.keys.shape[2]:
        raise ValueError(f"KV cache holds {cache.keys.shape[2]} positions, {end} were asked for")
    q = split_heads(q, n_heads)                                    # (B, NH, Tn, HS)
    HS = q.shape[-1]
    cache.keys[:, :, start:end] = split_heads(k, n_kv_heads)       # (B, NKV, Tn, HS)
    cache.values[:, :, start:end] = split_heads(v, n_kv_heads)
    cache.length = end
    keys = cache.keys[:, :, None, :end]                            # (B, NKV, 1, end, HS)
    values = cache.values[:, :, None, :end]
    q = q.reshape(B, n_kv_heads, n_heads // n_kv_heads, Tn, HS)    # (B, NKV, G, Tn, HS): head h = kv * G + g
    xp = array_module(q)
    scale = q.dtype.type(1.0 / math.sqrt(HS))
    scores = (q @ keys.swapaxes(-1, -2)) * scale                   # (B, NKV, G, Tn, end)
    future = xp.arange(end)[None, :] > xp.arange(start, end)[:, None]   # (Tn, end)
    scores[..., future] = -math.inf
    scores -= scores.max(axis=-1, keepdims=True)
    att = xp.exp(scores)
    att /= att.sum(axis=-1, keepdims=True)
    y = (att @ values).reshape(B, n_heads, Tn, HS)                 # (B, NKV, G, Tn, HS) -> (B, NH, Tn, HS)
    return merge_heads(y)                                          # (B, Tn, NH * HS)


def cached_attention(q, k, v, n_heads, cache, n_kv_heads=None):
    """The tape wrapper: refuses to run where a gradient is wanted."""
    if q.requires_grad or k.requires_grad or v.requires_grad:
        raise RuntimeError("attention with a KV cache is for inference: run it under numgpt.no_grad()")
    return record(cached_attention_forward(q.data, k.data, v.data, n_heads, cache, n_kv_heads), (q, k, v), None,
                  "cached_attention")
