"""numba twin of numgpt.ops.attention: the causal attention core, one
(batch, head) pair per prange iteration, reading queries, keys and values
straight from the fused (B, T, 3C) projection.

Shapes: qkv (B, T, 3C); per head q, k, v (T, HS) are strided views of it;
att and mask (B, NH, T, T); out and dout (B, T, C).

Causal: row t touches columns t2 <= t only; the future half of ``att`` is
written as zeros, as the NumPy twin's softmax leaves it. The dot products over
HS are laid out as axpy loops over t2 (on a transposed copy of k or v, (HS, T))
so that they vectorise without reassociating sums: no fastmath, and each
element is summed in a fixed order. Accumulators are in the input dtype.
"""
import numpy
from numba import njit, prange

from numgpt.ops.attention import AttentionCache


@njit(parallel=True, cache=True)
def _attention_forward(qkv, n_heads, mask, has_mask, scale, att, out):
    B, T, C3 = qkv.shape
    C = C3 // 3
    HS = C // n_heads
    zero = qkv.dtype.type(0)
    for bh in prange(B * n_heads):
        b, h = bh // n_heads, bh % n_heads
        q = numpy.ascontiguousarray(qkv[b, :, h * HS:(h + 1) * HS])   # (T, HS), contiguous copies so
        v = numpy.ascontiguousarray(qkv[b, :, 2 * C + h * HS:2 * C + (h + 1) * HS])  # that loops vectorise
        kT = numpy.ascontiguousarray(qkv[b, :, C + h * HS:C + (h + 1) * HS].T)  # (HS, T)
        row = numpy.empty(T, dtype=qkv.dtype)                          # (T,) scores of query t
        y = numpy.empty(HS, dtype=qkv.dtype)                           # (HS,)
        for t in range(T):
            # 2. scores = q @ k^T * scale, causal: t2 <= t only
            for t2 in range(t + 1):
                row[t2] = zero
            for d in range(HS):
                qd = q[t, d]
                for t2 in range(t + 1):
                    row[t2] += qd * kT[d, t2]
            # 3.-4. softmax over the visible columns (a NaN score makes the total, so the row, NaN)
            for t2 in range(t + 1):
                row[t2] *= scale
            rowmax = row[0]
            for t2 in range(1, t + 1):
                if row[t2] > rowmax:
                    rowmax = row[t2]
            total = zero
            for t2 in range(t + 1):
                row[t2] = numpy.exp(row[t2] - rowmax)
                total += row[t2]
            for t2 in range(t + 1):
                att[b, h, t, t2] = row[t2] / total
            for t2 in range(t + 1, T):
                att[b, h, t, t2] = zero
            # 5.-6. y = (att * mask) @ v
            for d in range(HS):
                y[d] = zero
            for t2 in range(t + 1):
                a = att[b, h, t, t2] * mask[b, h, t, t2] if has_mask else att[b, h, t, t2]
                for d in range(HS):
                    y[d] += a * v[t2, d]
            # 7. merge heads: out[b, t, h*HS:(h+1)*HS] = y
            for d in range(HS):
                out[b, t, h * HS + d] = y[d]


def attention_forward(qkv, n_heads, mask=None):
    B, T, C3 = qkv.shape
    qkv = numpy.ascontiguousarray(qkv)
    HS = C3 // (3 * n_heads)
    scale = qkv.dtype.type(1.0 / numpy.sqrt(HS))
    att = numpy.empty((B, n_heads, T, T), dtype=qkv.dtype)             # (B, NH, T, T)
    out = numpy.empty((B, T, C3 // 3), dtype=qkv.dtype)                # (B, T, C)
    mask_arg = _as_mask(mask, qkv.dtype)
    _attention_forward(qkv, n_heads, mask_arg, mask is not None, scale, att, out)
    return out, AttentionCache(qkv, att, mask, n_heads)


@njit(parallel=True, cache=True)
def _attention_backward(dout, qkv, att, mask, has_mask, n_heads, scale, dqkv):
    B, T, C3 = qkv.shape
    C = C3 // 3
    HS = C // n_heads
    zero = qkv.dtype.type(0)
    for bh in prange(B * n_heads):
        b, h = bh // n_heads, bh % n_heads
        q = numpy.ascontiguousarray(qkv[b, :, h * HS:(h + 1) * HS])   # (T, HS), contiguous copies
        k = numpy.ascontiguousarray(qkv[b, :, C + h * HS:C + (h + 1) * HS])
        vT = numpy.ascontiguousarray(qkv[b, :, 2 * C + h * HS:2 * C + (h + 1) * HS].T)  # (HS, T)
        dy = numpy.ascontiguousarray(dout[b, :, h * HS:(h + 1) * HS])  # (T, HS)
        dq = numpy.zeros((T, HS), dtype=qkv.dtype)
        dk = numpy.zeros((T, HS), dtype=qkv.dtype)
        dv = numpy.zeros((T, HS), dtype=qkv.dtype)
        drow = numpy.empty(T, dtype=qkv.dtype)                         # (T,) d scores of query t
        for t in range(T):
            # 6. y = att_dropped @ v:  datt = dy @ v^T,  dv += att_dropped^T @ dy
            for t2 in range(t + 1):
                drow[t2] = zero
            for d in range(HS):
                g = dy[t, d]
                for t2 in range(t + 1):
                    drow[t2] += g * vT[d, t2]
            for t2 in range(t + 1):
                a = att[b, h, t, t2] * mask[b, h, t, t2] if has_mask else att[b, h, t, t2]
                for d in range(HS):
                    dv[t2, d] += a * dy[t, d]
            # 5. att_dropped = att * mask
            if has_mask:
                for t2 in range(t + 1):
                    drow[t2] *= mask[b, h, t, t2]
            # 4. att = softmax(scores): dscores = att * (datt - sum(datt * att))
            s = zero
            for t2 in range(t + 1):
                s += drow[t2] * att[b, h, t, t2]
            # 2. scores = q @ k^T * scale
            for t2 in range(t + 1):
                drow[t2] = att[b, h, t, t2] * (drow[t2] - s) * scale
            for t2 in range(t + 1):
                ds = drow[t2]
                for d in range(HS):
                    dq[t, d] += ds * k[t2, d]
                    dk[t2, d] += ds * q[t, d]
        for t in range(T):
            for d in range(HS):
                dqkv[b, t, h * HS + d] = dq[t, d]
                dqkv[b, t, C + h * HS + d] = dk[t, d]
                dqkv[b, t, 2 * C + h * HS + d] = dv[t, d]


def attention_backward(dout, cache):
    qkv, att, mask, n_heads = cache
    HS = qkv.shape[2] // (3 * n_heads)
    scale = qkv.dtype.type(1.0 / numpy.sqrt(HS))
    dqkv = numpy.empty_like(qkv)                                       # (B, T, 3C)
    dout = numpy.ascontiguousarray(dout, dtype=qkv.dtype)              # (B, T, C)
    _attention_backward(dout, qkv, att, _as_mask(mask, qkv.dtype), mask is not None, n_heads, scale, dqkv)
    return dqkv


def _as_mask(mask, dtype):
    """The dropout mask, or a (1, 1, 1, 1) stand-in that the kernels never read."""
    return numpy.ones((1, 1, 1, 1), dtype=dtype) if mask is None else numpy.ascontiguousarray(mask, dtype=dtype)


JITTED = (_attention_forward, _attention_backward)
