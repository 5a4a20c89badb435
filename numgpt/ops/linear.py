"""Linear: out = x @ W.T + b, with W stored (out_features, in_features) as in PyTorch.

Shapes: x (..., IN), W (OUT, IN), b (OUT,), out (..., OUT). The leading axes
are flattened to one so that each product is a single 2-D product; W.T is a
transposed view, never a copy. The products go through ``matmul``: NumPy's
BLAS here, a numba kernel in numba mode where that is faster
(numgpt.kernels.matmul).
"""
from typing import NamedTuple

import numpy

from numgpt import backend
from numgpt.autograd import record
from numgpt.ops.scratch import reusable


class LinearCache(NamedTuple):
    x2d: numpy.ndarray       # (N, IN), N = product of the leading axes
    weight: numpy.ndarray    # (OUT, IN)
    has_bias: bool


def matmul(a, b, out=None):
    """a (M, K) @ b (K, N) -> (M, N), into ``out`` when given (the NumPy twin: BLAS)."""
    return numpy.matmul(a, b, out=out)


def linear_forward(x, weight, bias=None):
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])             # (..., IN) -> (N, IN)
    out = backend.dispatch(matmul)(x2d, weight.T)   # (N, IN) @ (IN, OUT) -> (N, OUT)
    if bias is not None:
        out += bias                              # (N, OUT) + (OUT,)
    return out.reshape(lead + (weight.shape[0],)), LinearCache(x2d, weight, bias is not None)


def linear_backward(dout, cache):
    x2d, weight, has_bias = cache
    dout2d = dout.reshape(-1, weight.shape[0])   # (..., OUT) -> (N, OUT)
    # out = x2d @ weight.T
    product = backend.dispatch(matmul)
    dx = product(dout2d, weight).reshape(dout.shape[:-1] + (weight.shape[1],))   # (N, OUT) @ (OUT, IN) -> (..., IN)
    dweight = product(dout2d.T, x2d, out=reusable("linear.dweight", weight.shape,
                                                  numpy.result_type(dout2d, x2d)))   # (OUT, N) @ (N, IN) -> (OUT, IN)
    # out += bias
    dbias = dout2d.sum(axis=0) if has_bias else None                       # (N, OUT) -> (OUT,)
    return dx, dweight, dbias


def linear(x, weight, bias=None):
    out, cache = linear_forward(x.data, weight.data, None if bias is None else bias.data)
    return record(out, (x, weight, bias), lambda dout: linear_backward(dout, cache))
