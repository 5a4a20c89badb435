"""numba twins of numgpt/ops/fused.py: each fused epilogue in one pass over
the activations each way (but the bias gradient, below). The arithmetic is the op-by-op twins', step for
step and in the same order (the GELU and LayerNorm row functions are theirs,
from kernels/gelu.py and kernels/layer_norm.py), so a fused op gives the same
bits as its parts run one by one in numba mode; only the passes over memory
are fewer (tests/test_fused.py checks the bits and the reference).

Shapes: rows of the activations, (..., C) or (..., F) seen as (N, C) or (N, F).

- bias + GELU, forward: after the product h = x W^T (numgpt's matmul kernel),
  one pass per row adds the bias in place (h is what the backward keeps) and
  writes gelu(h). Backward: one pass per row computes dh = dout * gelu'(h);
  the bias gradient is NumPy's ``dh.sum(axis=0)`` as in the linear twin (it
  vectorises across the row, 0.1 ms at the seed's shapes, where a numba sum
  over column strips, fused into the GELU pass, made the backward 1.7x slower);
  then the two products.
- dropout + residual add: out = x + y * keep * scale in one pass; backward
  dx = dout (the array itself) and dy = dout * keep * scale in one pass; on
  one thread (see below).
- dropout + residual add + LayerNorm, forward: per row, s = x + y * keep * scale,
  then the LayerNorm of s while the row is in cache. Backward, per row: the
  LayerNorm's backward, the fan-out sum ds = ds_res + ds_norm, and
  dy = ds * keep * scale; dweight and dbias in chunks of ROWS_PER_CHUNK rows
  summed in chunk order, as kernels/layer_norm.py does.
"""
import numpy
from numba import njit, prange
from numgpt.kernels.bf16 import product_of
from numgpt.kernels.gelu import gelu_span_backward, gelu_span_forward
from numgpt.kernels.layer_norm import ROWS_PER_CHUNK, _sum_rows_in_order, layer_norm_row, layer_norm_row_backward
from numgpt.kernels.linear import linear_backward_products

from numgpt.ops.fused import DropoutAddLayerNormCache, LinearGELUCache
from numgpt.ops.gelu import CUBIC, SQRT_2_OVER_PI
from numgpt.ops.layer_norm import EPS, LayerNormCache
from numgpt.ops.linear import LinearCache
from numgpt.precision import autocast_active


# ---------------------------------------------------------------- bias + GELU
@njit(parallel=True, cache=True)
def _bias_gelu_forward(h, bias, has_bias, c, k, out):
    N, F = h.shape
    for i in prange(N):
        if has_bias:
            for j in range(F):
                h[i, j] += bias[j]                                     # linear 3. h = x W^T + b, in place
        gelu_span_forward(h[i], c, k, out[i])                          # gelu 1.-3.


def linear_gelu_forward(x, weight, bias=None):
    bf16 = autocast_active(x)                                          # bf16 product under autocast
    lead, F = x.shape[:-1], weight.shape[0]
    x2d = x.reshape(-1, x.shape[-1])                                   # (..., IN) -> (N, IN)
    h = product_of(bf16)(x2d, weight.T)                             # (N, IN) @ (IN, F) -> (N, F)
    out = numpy.empty_like(h)
    has_bias = bias is not None
    _bias_gelu_forward(h, bias.astype(h.dtype, copy=False) if has_bias else numpy.empty(F, h.dtype), has_bias,
                       h.dtype.type(SQRT_2_OVER_PI), h.dtype.type(CUBIC), out)
    return out.reshape(lead + (F,)), LinearGELUCache(LinearCache(x2d, weight, has_bias, bf16), h.reshape(lead + (F,)))


@njit(parallel=True, cache=True)
def _gelu_rows_backward(dout, h, c, k, dh):
    for i in prange(h.shape[0]):
        gelu_span_backward(dout[i], h[i], c, k, dh[i])                 # gelu: dh = dout * gelu'(h)


def linear_gelu_backward(dout, cache):
    h = cache.gelu
    F, IN = h.shape[-1], cache.linear.weight.shape[1]
    h2d = h.reshape(-1, F)                                             # (N, F)
    dout2d = numpy.ascontiguousarray(dout, dtype=h.dtype).reshape(-1, F)
    dh = numpy.empty_like(h2d)
    _gelu_rows_backward(dout2d, h2d, h.dtype.type(SQRT_2_OVER_PI), h.dtype.type(CUBIC), dh)
    dbias = dh.sum(axis=0) if cache.linear.has_bias else None          # linear 3.: NumPy's row-by-row sum
    dx, dweight = linear_backward_products(dh, cache.linear)           # linear 2.
    return dx.reshape(dout.shape[:-1] + (IN,)), dweight, dbias


# ---------------------------------------------------------------- dropout + residual add
@njit(inline="always")
def dropout_add_span(x, y, keep, scale, out):
    """out = x + y * keep * scale over 1-D spans (keep bool)."""
    zero, one = x.dtype.type(0), x.dtype.type(1)
    for i in range(x.size):
        out[i] = x[i] + y[i] * (one if keep[i] else zero) * scale


@njit(inline="always")
def dropout_span(dout, keep, scale, dy):
    """dy = dout * keep * scale over 1-D spans: dropout's backward."""
    zero, one = dout.dtype.type(0), dout.dtype.type(1)
    for i in range(dout.size):
        dy[i] = dout[i] * (one if keep[i] else zero) * scale


# One thread: a multiply-add per element is bound by memory, and numba's parallel launch costs
# about 0.2 ms here, more than the whole pass at the seed's shapes (0.06 ms for 393,216 elements
# on one thread, 0.25 ms on two; NumPy's dropout and add, 0.2 ms).
@njit(cache=True)
def _dropout_add_forward(x, y, keep, scale, out):
    dropout_add_span(x, y, keep, scale, out)


@njit(cache=True)
def _dropout_backward(dout, keep, scale, dy):
    dropout_span(dout, keep, scale, dy)


def _flat(array, dtype=None):
    return numpy.ascontiguousarray(array, dtype=dtype).reshape(-1)


def dropout_add_forward(x, y, mask=None):
    if mask is None:
        return x + y, None
    out = numpy.empty(x.shape, dtype=x.dtype)
    _dropout_add_forward(_flat(x), _flat(y, x.dtype), _flat(mask.keep), x.dtype.type(mask.scale), out.reshape(-1))
    return out, mask


def dropout_add_backward(dout, cache):
    mask = cache
    if mask is None:
        return dout, dout
    dy = numpy.empty(dout.shape, dtype=dout.dtype)
    _dropout_backward(_flat(dout), _flat(mask.keep), dout.dtype.type(mask.scale), dy.reshape(-1))
    return dout, dy


# ---------------------------------------------------------------- dropout + residual add + LayerNorm
@njit(parallel=True, cache=True)
def _dropout_add_layer_norm_forward(x, y, keep, has_mask, scale, weight, bias, eps, s, out, mean, rstd):
    N, C = x.shape
    for i in prange(N):
        if has_mask:
            dropout_add_span(x[i], y[i], keep[i], scale, s[i])         # 1.-2. s = x + y * keep * scale
        else:
            for c in range(C):
                s[i, c] = x[i, c] + y[i, c]
        mean[i], rstd[i] = layer_norm_row(s[i], weight, bias, eps, out[i])   # 3.


def _keep_rows(mask, N):
    """(keep (N, C) bool, has_mask): mask's rows, or an empty (N, 0) stand-in without a mask."""
    if mask is None:
        return numpy.empty((N, 0), dtype=numpy.bool_), False
    return numpy.ascontiguousarray(mask.keep).reshape(N, -1), True


def dropout_add_layer_norm_forward(x, y, mask, weight, bias, eps=EPS):
    C = x.shape[-1]
    x2d = numpy.ascontiguousarray(x).reshape(-1, C)                    # (..., C) -> (N, C)
    y2d = numpy.ascontiguousarray(y, dtype=x.dtype).reshape(-1, C)
    N = x2d.shape[0]
    keep, has_mask = _keep_rows(mask, N)
    s, out = numpy.empty_like(x2d), numpy.empty_like(x2d)
    mean, rstd = numpy.empty(N, dtype=x.dtype), numpy.empty(N, dtype=x.dtype)     # (N,)
    _dropout_add_layer_norm_forward(x2d, y2d, keep, has_mask, x.dtype.type(mask.scale if has_mask else 1.0),
                                    weight.astype(x.dtype, copy=False), bias.astype(x.dtype, copy=False), eps,
                                    s, out, mean, rstd)
    s, stats_shape = s.reshape(x.shape), x.shape[:-1] + (1,)
    cache = LayerNormCache(s, weight, mean.reshape(stats_shape), rstd.reshape(stats_shape))
    return (s, out.reshape(x.shape)), DropoutAddLayerNormCache(mask, cache)


@njit(parallel=True, cache=True)
def _dropout_add_layer_norm_backward(ds_res, has_res, dout, s, weight, mean, rstd, keep, has_mask, scale,
                                     ds, dy, dweight_parts, dbias_parts):
    N, C = s.shape
    for chunk in prange(dweight_parts.shape[0]):
        dweight_parts[chunk] = 0
        dbias_parts[chunk] = 0
        for i in range(chunk * ROWS_PER_CHUNK, min((chunk + 1) * ROWS_PER_CHUNK, N)):
            layer_norm_row_backward(dout[i], s[i], weight, mean[i], rstd[i], ds[i],
                                    dweight_parts[chunk], dbias_parts[chunk])     # 3.
            if has_res:
                for c in range(C):
                    ds[i, c] = ds_res[i, c] + ds[i, c]                 # the fan-out sum
            if has_mask:
                dropout_span(ds[i], keep[i], scale, dy[i])             # 1.: dy = ds * keep * scale


def dropout_add_layer_norm_backward(douts, cache):
    ds_res, dout = douts
    if dout is None:                                                   # only s was used
        return (None,) * 4 if ds_res is None else dropout_add_backward(ds_res, cache.mask) + (None, None)
    s, weight, mean, rstd = cache.layer_norm
    C = s.shape[-1]
    s2d = s.reshape(-1, C)                                             # (N, C)
    N = s2d.shape[0]
    dout2d = numpy.ascontiguousarray(dout, dtype=s.dtype).reshape(-1, C)
    has_res = ds_res is not None
    res2d = numpy.ascontiguousarray(ds_res, dtype=s.dtype).reshape(-1, C) if has_res else numpy.empty((N, 0), s.dtype)
    keep, has_mask = _keep_rows(cache.mask, N)
    n_chunks = max(1, -(-N // ROWS_PER_CHUNK))
    ds = numpy.empty_like(s2d)
    dy = numpy.empty_like(s2d) if has_mask else ds                     # without dropout, y's gradient is ds
    dweight_parts = numpy.empty((n_chunks, C), dtype=s.dtype)          # (chunks, C) partial sums
    dbias_parts = numpy.empty((n_chunks, C), dtype=s.dtype)
    _dropout_add_layer_norm_backward(res2d, has_res, dout2d, s2d, weight.astype(s.dtype, copy=False),
                                     mean.reshape(-1), rstd.reshape(-1), keep, has_mask,
                                     s.dtype.type(cache.mask.scale if has_mask else 1.0),
                                     ds, dy, dweight_parts, dbias_parts)
    dweight = _sum_rows_in_order(dweight_parts).astype(weight.dtype, copy=False)   # (C,)
    dbias = _sum_rows_in_order(dbias_parts).astype(weight.dtype, copy=False)
    return ds.reshape(s.shape), dy.reshape(s.shape), dweight, dbias


JITTED = (_bias_gelu_forward, _gelu_rows_backward, _dropout_add_forward, _dropout_backward,
          _dropout_add_layer_norm_forward, _dropout_add_layer_norm_backward)   # the span functions compile inside them
