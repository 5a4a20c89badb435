"""Causal multi-head attention, between the query/key/value projections and
``out_proj`` (the core of the seed's MultiHeadAttention), with grouped-query
attention and Philox dropout inside the op.

Shapes: q (B, T, NH * HS), split into NH query heads of HS channels; k, v
(B, T, NKV * HS), NKV key/value heads; NH = NKV * G. Query head h reads
key/value head h // G (Hugging Face's order), so the heads are grouped as
(B, NKV, G, T, HS), head h = kv * G + g. Plain multi-head attention is
NKV = NH, G = 1. scores and att (B, NKV, G, T, T); out (B, T, NH * HS).

Forward, per query head (q now (T, HS), k and v its key/value head's (T, HS)):

    1. split heads     q (B, T, NH * HS) -> (B, NKV, G, T, HS); k, v -> (B, NKV, 1, T, HS)
    2. scores = q k^T / sqrt(HS)                   (T, T)    (k, v broadcast over the G heads of a group)
    3. causal mask     scores[t, t2] = -inf for t2 > t (a position sees only the past)
    4. att = softmax(scores) along each row
    5. dropout on att  (training only): att_dropped = att * keep / (1 - p)
    6. y = att_dropped v                           (T, HS)
    7. merge heads     (B, NKV, G, T, HS) -> (B, T, NH * HS)

Backward, the same steps in reverse:

    7. dy is dout with its heads split again (a reshape has no arithmetic).
    6. y = A v with A = att_dropped, a matrix product as in Linear:
           dA = dy v^T   (T, T)        dv = A^T dy   (T, HS), per query head
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
           dq = ds k * c   (T, HS)     dk = ds^T q * c   (T, HS), per query head
    1. dq gets its heads merged back to (B, T, NH * HS). A key/value head
       kv is read by the G query heads h = kv * G + g (step 2 broadcasts it):
       one tensor used G times, whose gradient is the sum of the G uses'
       (the fan-out rule of the autograd, numgpt/autograd.py):
           dk[kv] = sum over g < G of (ds[kv * G + g]^T q[kv * G + g]) * c
           dv[kv] = sum over g < G of A[kv * G + g]^T dy[kv * G + g]
       then (B, NKV, T, HS) -> (B, T, NKV * HS). No key/value head is ever
       copied G times.

Dropout is a rule, ``AttentionDropout(p, key)`` (numgpt/ops/philox.py):
weight (b, h, i, j) is kept iff Philox draw ((b * NH + h) * T + i) * T + j of
the key is >= p * 2^32. This reference builds the whole keep mask from it,
on the host (and moves it to the device of q), and keeps it for the backward;
the numba twin regenerates each tile's part of it instead and keeps nothing,
with the same bits.

Under ``numgpt.autocast`` (numgpt/precision.py) the four products of
steps 2 and 6 and their backward products take bf16-rounded operands with
float32 sums (q, k, v, the weights after dropout, dy, and the score
gradient); the mask, the softmax and its statistics stay float32. The
forward decides, the cache keeps the decision for the backward. The scale c
is applied after each product (not folded into an operand), as the flash
twin does, so that both round the same values.

The KV cache of generation keeps only the NKV heads (``LayerKVCache``) and
groups the queries as the forward does: no copies are made there either.
"""
import math
from typing import NamedTuple, Optional

import numpy

from numgpt import backend
from numgpt.autograd import record
from numgpt.device import array_module
from numgpt.device import like as on_device_of
from numgpt.ops.philox import AttentionDropout, keep_threshold
from numgpt.precision import autocast_active, reference_matmul
from numgpt.registry import resolve


class AttentionCache(NamedTuple):
    q: numpy.ndarray                    # (B, NKV, G, T, HS)
    k: numpy.ndarray                    # (B, NKV, 1, T, HS)
    v: numpy.ndarray                    # (B, NKV, 1, T, HS)
    att: numpy.ndarray                  # (B, NKV, G, T, T) softmax weights, before dropout
    keep: Optional[numpy.ndarray]       # (B, NKV, G, T, T) bool keep mask, or None (no dropout)
    dropout: Optional[AttentionDropout]  # (p, key), or None
    bf16: bool = False                  # the products take bf16 operands (decided at the forward, under autocast)


def split_heads(x, n_heads):
    """(B, T, C) -> (B, NH, T, HS), a view."""
    B, T, C = x.shape
    return x.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, NH, T, HS) -> (B, T, C)."""
    B, NH, T, HS = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, NH * HS)


def group_heads(x, n_kv_heads, n_heads):
    """(B, T, NH * HS) -> (B, NKV, G, T, HS), a view: head h = kv * G + g."""
    B, T, C = x.shape
    return split_heads(x, n_heads).reshape(B, n_kv_heads, n_heads // n_kv_heads, T, C // n_heads)


def merge_groups(x):
    """(B, NKV, G, T, HS) -> (B, T, NKV * G * HS)."""
    B, NKV, G, T, HS = x.shape
    return merge_heads(x.reshape(B, NKV * G, T, HS))


def apply_keep(x, keep, dropout):
    """x * keep / (1 - p), in x's dtype (x itself without dropout)."""
    if keep is None:
        return x
    out = array_module(x).multiply(x, keep, dtype=x.dtype)
    out *= x.dtype.type(dropout.scale)
    return out


def attention_forward(q, k, v, n_heads, dropout=None, n_kv_heads=None):
    bf16 = autocast_active(q)
    product = reference_matmul(bf16)                               # bf16 operands under autocast, else @
    xp, (B, T, _) = array_module(q), q.shape
    NKV = n_kv_heads or n_heads
    q = group_heads(q, NKV, n_heads)                               # 1. (B, NKV, G, T, HS)
    k, v = (split_heads(x, NKV)[:, :, None] for x in (k, v))       #    2 x (B, NKV, 1, T, HS)
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    scores = product(q, k.swapaxes(-1, -2)) * scale                # 2. (B, NKV, G, T, T)
    future = xp.triu(xp.ones((T, T), dtype=bool), k=1)
    scores[..., future] = -math.inf                                # 3. causal mask
    scores -= scores.max(axis=-1, keepdims=True)                   # 4. softmax (shifted: exp never overflows)
    att = xp.exp(scores)
    att /= att.sum(axis=-1, keepdims=True)
    keep = None                                                    # 5. dropout on the weights
    if dropout is not None:
        keep = on_device_of(dropout.keep(B, n_heads, T), q).reshape(att.shape)   # (B, NH, T, T) -> groups
    att_dropped = apply_keep(att, keep, dropout)
    y = product(att_dropped, v)                                    # 6. (B, NKV, G, T, T) @ (B, NKV, 1, T, HS)
    return merge_groups(y), AttentionCache(q, k, v, att, keep, dropout, bf16)   # 7. -> (B, T, NH * HS)


def attention_backward(dout, cache):
    q, k, v, att, keep, dropout, bf16 = cache
    product = reference_matmul(bf16)                               # the forward's choice
    _, NKV, G, _, HS = q.shape                                     # (B, NKV, G, T, HS)
    scale = q.dtype.type(1.0 / math.sqrt(HS))
    # 7. out = merge_groups(y)
    dy = group_heads(dout, NKV, NKV * G)                           # (B, NKV, G, T, HS)
    # 6. y = att_dropped @ v: v is shared by the G heads of a group, its gradient sums over them
    att_dropped = apply_keep(att, keep, dropout)
    dv = product(att_dropped.swapaxes(-1, -2), dy).sum(axis=2)     # (B, NKV, G, T, HS) -> (B, NKV, T, HS)
    datt = product(dy, v.swapaxes(-1, -2))                         # (B, NKV, G, T, T)
    # 5. att_dropped = att * keep * scale
    datt = apply_keep(datt, keep, dropout)
    # 4. att = softmax(scores): dscores = att * (datt - rowsum(datt * att))
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    # 3. masked scores are constants: att is 0 there, so dscores is already 0
    # 2. scores = q @ k^T * scale: k, too, is shared by the G heads of a group
    dq = product(dscores, k) * scale                               # (B, NKV, G, T, HS)
    dk = product(dscores.swapaxes(-1, -2), q).sum(axis=2) * scale  # (B, NKV, G, T, HS) -> (B, NKV, T, HS)
    # 1. split heads
    return merge_groups(dq), merge_heads(dk), merge_heads(dv)      # (B, T, NH * HS), 2 x (B, T, NKV * HS)


def _check_heads(q, k, v, n_heads, n_kv_heads):
    B, T, C = q.shape
    if (C % n_heads or n_heads % n_kv_heads or k.shape != (B, T, C // n_heads * n_kv_heads)
            or v.shape != k.shape):
        raise ValueError(f"attention needs q (B, T, NH * HS) and k, v (B, T, NKV * HS) with NH = {n_heads} a "
                         f"multiple of NKV = {n_kv_heads}; got {q.shape}, {k.shape}, {v.shape}")


def attention_dropout(p):
    """The dropout of one attention call: p, and a fresh 64-bit Philox key from numgpt's generator."""
    keep_threshold(p)                                              # p in [0, 1)
    return AttentionDropout(float(p), int(backend.get_generator().bit_generator.random_raw()))


def causal_attention(q, k, v, n_heads, dropout_p=0.0, training=False, n_kv_heads=None):
    """Scaled dot-product attention with a causal mask: q (B, T, NH * HS), k, v
    (B, T, NKV * HS) -> (B, T, NH * HS). ``n_kv_heads`` (default n_heads) below
    n_heads is grouped-query attention."""
    n_kv_heads = n_kv_heads or n_heads
    _check_heads(q, k, v, n_heads, n_kv_heads)
    dropout = attention_dropout(dropout_p) if training and dropout_p > 0.0 else None
    forward, backward = resolve(attention_forward, attention_backward, q.data)
    out, cache = forward(q.data, k.data, v.data, n_heads, dropout, n_kv_heads)
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
