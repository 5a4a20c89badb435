"""numba twin of numgpt.ops.attention: the four products of attention go to
numgpt.kernels.matmul (batched over B x NH on contiguous per-head copies:
the AVX-512 kernel where it runs, else BLAS), and one numba pass
per direction does what NumPy needs many temporaries for: scale, causal mask,
softmax and dropout forward, and their gradient backward.

Shapes: q, k, v (B, T, C); their heads (B, NH, T, HS) contiguous copies;
scores, att, dropped (B, NH, T, T); out and dout (B, T, C).

Causal: row t reads columns t2 <= t only and writes zeros beyond, as the
NumPy twin's softmax leaves them. One prange iteration is one row of one head
(independent rows: the same result on every run); no fastmath, so -inf and
NaN behave as in NumPy. Sums are in the input dtype.
"""
import numpy
from numba import njit, prange

from numgpt.kernels.matmul import matmul
from numgpt.kernels.vexp import vexp

from numgpt.ops.attention import AttentionCache, merge_heads, split_heads

_NO_KEEP = numpy.ones((1, 1, 1, 1), dtype=numpy.bool_)   # stand-in when there is no dropout (never read)


@njit(parallel=True, cache=True)
def _softmax_forward(scores, scale, keep, keep_scale, has_mask, att, dropped):
    B, NH, T, _ = scores.shape
    zero = scores.dtype.type(0)
    for row in prange(B * NH * T):
        b, h, t = row // (NH * T), (row // T) % NH, row % T
        s, a, d = scores[b, h, t], att[b, h, t], dropped[b, h, t]
        # 2.-3. scale, causal: columns t2 <= t
        rowmax = s[0] * scale
        for t2 in range(1, t + 1):
            if s[t2] * scale > rowmax:
                rowmax = s[t2] * scale
        # 4. softmax (a NaN score makes the total, so the row, NaN)
        for t2 in range(t + 1):
            a[t2] = vexp(s[t2] * scale - rowmax)                       # no sum here: this loop vectorises
        total = zero
        for t2 in range(t + 1):
            total += a[t2]
        for t2 in range(t + 1):
            a[t2] = a[t2] / total
        for t2 in range(t + 1, T):
            a[t2] = zero
        # 5. dropout on the weights (without dropout, ``dropped`` is ``att`` itself)
        if has_mask:
            for t2 in range(T):
                d[t2] = a[t2] * keep_scale if keep[b, h, t, t2] else zero


@njit(parallel=True, cache=True)
def _softmax_backward(ddropped, att, keep, keep_scale, has_mask, scale, dscores):
    B, NH, T, _ = att.shape
    zero = att.dtype.type(0)
    for row in prange(B * NH * T):
        b, h, t = row // (NH * T), (row // T) % NH, row % T
        g, a, ds = ddropped[b, h, t], att[b, h, t], dscores[b, h, t]
        # 5. dropped = att * keep * keep_scale
        if has_mask:
            for t2 in range(t + 1):
                g[t2] = g[t2] * keep_scale if keep[b, h, t, t2] else zero
        # 4. att = softmax: dscores = att * (datt - sum(datt * att)); 2. times scale
        total = zero
        for t2 in range(t + 1):
            total += g[t2] * a[t2]
        for t2 in range(t + 1):
            ds[t2] = a[t2] * (g[t2] - total) * scale
        # 3. the masked future: constants
        for t2 in range(t + 1, T):
            ds[t2] = zero


def _heads(x, n_heads):
    """(B, T, C) -> contiguous (B, NH, T, HS) (a copy)."""
    return numpy.ascontiguousarray(split_heads(x, n_heads))


def _mask_args(mask, dtype):
    if mask is None:
        return _NO_KEEP, dtype.type(1), False
    return mask.keep, dtype.type(mask.scale), True


def attention_forward(q, k, v, n_heads, mask=None):
    q, k, v = (_heads(x, n_heads) for x in (q, k, v))                 # 1. 3 x (B, NH, T, HS)
    scale = q.dtype.type(1.0 / numpy.sqrt(q.shape[-1]))
    scores = matmul(q, k.swapaxes(-1, -2))                             # 2. (B, NH, T, T)
    att = numpy.empty_like(scores)
    dropped = att if mask is None else numpy.empty_like(scores)
    _softmax_forward(scores, scale, *_mask_args(mask, q.dtype), att, dropped)   # 3.-5.
    y = matmul(dropped, v)                                             # 6. (B, NH, T, HS)
    return merge_heads(y), AttentionCache(q, k, v, att, mask)          # 7. (B, T, C) (a copy)


def attention_backward(dout, cache):
    q, k, v, att, mask = cache
    n_heads = q.shape[1]
    scale = q.dtype.type(1.0 / numpy.sqrt(q.shape[-1]))
    keep, keep_scale, has_mask = _mask_args(mask, q.dtype)
    # 7. out = y merged: dy (B, NH, T, HS)
    dy = numpy.ascontiguousarray(split_heads(dout, n_heads), dtype=q.dtype)
    # 6. y = dropped @ v
    dropped = att if mask is None else mask.apply(att)
    dv = matmul(dropped.swapaxes(-1, -2), dy)                          # (B, NH, T, HS)
    ddropped = matmul(dy, v.swapaxes(-1, -2))                          # (B, NH, T, T)
    # 5.-2. dropout, softmax, scale (in one pass)
    dscores = numpy.empty_like(att)
    _softmax_backward(ddropped, att, keep, keep_scale, has_mask, scale, dscores)
    # 2. scores = q @ k^T
    dq = matmul(dscores, k)                                            # (B, NH, T, HS)
    dk = matmul(dscores.swapaxes(-1, -2), q)
    # 1. split heads
    return merge_heads(dq), merge_heads(dk), merge_heads(dv)          # 3 x (B, T, C)


JITTED = (_softmax_forward, _softmax_backward)
