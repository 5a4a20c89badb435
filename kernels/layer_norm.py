"""numba twin of numgpt.ops.layer_norm: one row of C channels per prange
iteration. The row functions are also the LayerNorm of kernels/fused.py's
residual add + LayerNorm.

Shapes: x and out (..., C) seen as (N, C); weight, bias (C,); mean and rstd
(..., 1) as in the NumPy twin's LayerNormCache.

Accumulators: the row sums (mean, variance, and the two sums of the backward)
are float64 scalars, so that a 768- or 1600-wide row sums as accurately as
NumPy's pairwise sum; every array stays in the input dtype. dweight and dbias
are summed deterministically: fixed chunks of ROWS_PER_CHUNK rows each write
their own partial sums (prange over chunks), then the partials are added in
chunk order, whatever the thread count.
"""
import numpy
from numba import njit, prange

from numgpt.ops.layer_norm import EPS, LayerNormCache

ROWS_PER_CHUNK = 16


@njit(inline="always")
def layer_norm_row(x, weight, bias, eps, out):
    """out = LayerNorm of one row x (C,); returns (mean, rstd) in x's dtype."""
    C = x.shape[0]
    total = 0.0                                                        # float64 accumulator
    for c in range(C):
        total += x[c]
    m = x.dtype.type(total / C)                                        # 1. mean, kept in x's dtype
    sq = 0.0
    for c in range(C):
        xc = x[c] - m                                                  # 2. xc
        sq += xc * xc
    r = x.dtype.type(1.0 / numpy.sqrt(sq / C + eps))                   # 3.-4. rstd = 1 / sqrt(var + eps)
    for c in range(C):
        out[c] = (x[c] - m) * r * weight[c] + bias[c]                  # 5.-6. xhat * weight + bias
    return m, r


@njit(parallel=True, cache=True)
def _layer_norm_forward(x, weight, bias, eps, out, mean, rstd):
    for i in prange(x.shape[0]):
        mean[i], rstd[i] = layer_norm_row(x[i], weight, bias, eps, out[i])


def layer_norm_forward(x, weight, bias, eps=EPS):
    C = x.shape[-1]
    x2d = numpy.ascontiguousarray(x).reshape(-1, C)                    # (..., C) -> (N, C)
    out = numpy.empty_like(x2d)
    mean = numpy.empty(x2d.shape[0], dtype=x.dtype)                    # (N,)
    rstd = numpy.empty(x2d.shape[0], dtype=x.dtype)
    _layer_norm_forward(x2d, weight.astype(x.dtype, copy=False), bias.astype(x.dtype, copy=False), eps,
                        out, mean, rstd)
    stats_shape = x.shape[:-1] + (1,)
    return out.reshape(x.shape), LayerNormCache(x, weight, mean.reshape(stats_shape), rstd.reshape(stats_shape))


@njit(inline="always")
def layer_norm_row_backward(dout, x, weight, m, r, dx, dweight_part, dbias_part):
    """dx (C,) of one row; adds the row's terms into dweight_part, dbias_part (C,)."""
    C = x.shape[0]
    # 6. out = xhat * weight + bias
    sum_dxhat = 0.0                                                    # float64 accumulators
    sum_dxhat_xhat = 0.0
    for c in range(C):
        xhat = (x[c] - m) * r
        dweight_part[c] += dout[c] * xhat
        dbias_part[c] += dout[c]
        dxhat = dout[c] * weight[c]
        sum_dxhat += dxhat
        sum_dxhat_xhat += dxhat * xhat
    # 5..1: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    mean_dxhat = x.dtype.type(sum_dxhat / C)
    mean_dxhat_xhat = x.dtype.type(sum_dxhat_xhat / C)
    for c in range(C):
        xhat = (x[c] - m) * r
        dx[c] = r * (dout[c] * weight[c] - mean_dxhat - xhat * mean_dxhat_xhat)


@njit(parallel=True, cache=True)
def _layer_norm_backward(dout, x, weight, mean, rstd, dx, dweight_parts, dbias_parts):
    N = x.shape[0]
    for chunk in prange(dweight_parts.shape[0]):
        dweight_parts[chunk] = 0
        dbias_parts[chunk] = 0
        for i in range(chunk * ROWS_PER_CHUNK, min((chunk + 1) * ROWS_PER_CHUNK, N)):
            layer_norm_row_backward(dout[i], x[i], weight, mean[i], rstd[i], dx[i],
                                    dweight_parts[chunk], dbias_parts[chunk])


def layer_norm_backward(dout, cache):
    x, weight, mean, rstd = cache
    C = x.shape[-1]
    x2d = numpy.ascontiguousarray(x).reshape(-1, C)                    # (N, C)
    dout2d = numpy.ascontiguousarray(dout, dtype=x.dtype).reshape(-1, C)
    N = x2d.shape[0]
    n_chunks = max(1, -(-N // ROWS_PER_CHUNK))
    dx = numpy.empty_like(x2d)
    dweight_parts = numpy.empty((n_chunks, C), dtype=x.dtype)          # (chunks, C) partial sums
    dbias_parts = numpy.empty((n_chunks, C), dtype=x.dtype)
    _layer_norm_backward(dout2d, x2d, weight.astype(x.dtype, copy=False), mean.reshape(-1), rstd.reshape(-1),
                         dx, dweight_parts, dbias_parts)
    dweight = _sum_rows_in_order(dweight_parts)                        # (C,)
    dbias = _sum_rows_in_order(dbias_parts)
    return dx.reshape(x.shape), dweight.astype(weight.dtype, copy=False), dbias.astype(weight.dtype, copy=False)


@njit(cache=True)
def _sum_rows_in_order(parts):
    """parts (chunks, C) -> (C,), chunk 0 first: the same order on any number of threads."""
    total = parts[0].copy()
    for chunk in range(1, parts.shape[0]):
        total += parts[chunk]
    return total


JITTED = (_layer_norm_forward, _layer_norm_backward, _sum_rows_in_order)   # the row functions compile inside them
