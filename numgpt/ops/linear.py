"""Linear: out = x @ W.T + b, with W stored (out_features, in_features) as in PyTorch.

Shapes: x (..., IN), W (OUT, IN), b (OUT,), out (..., OUT); N is the product
of x's leading axes, which are flattened so that each product is one 2-D
product (W.T is a transposed view, never a copy).

The backward, one output element at a time. Forward:

    out[n, o] = sum_i x[n, i] W[o, i] + b[o]

so, with dout = dL/dout (N, OUT):

    dL/dx[n, i] = sum_o dout[n, o] W[o, i]      ->  dx = dout @ W         (N, OUT) @ (OUT, IN)
    dL/dW[o, i] = sum_n dout[n, o] x[n, i]      ->  dW = dout.T @ x       (OUT, N) @ (N, IN)
    dL/db[o]    = sum_n dout[n, o]              ->  db = dout.sum(axis=0)

Each weight is used by every row n, so its gradient sums over the rows (the
batch and the positions); each input row is used by every output o, so its
gradient sums over the outputs. The shapes check the algebra: a gradient
has its variable's shape.
"""
from typing import NamedTuple

import numpy

from numgpt.autograd import record
from numgpt.precision import autocast_active, autocast_weight, reference_matmul
from numgpt.registry import resolve


class LinearCache(NamedTuple):
    x2d: numpy.ndarray       # (N, IN)
    weight: numpy.ndarray    # (OUT, IN)
    has_bias: bool
    bf16: bool = False       # the products take bf16 operands (decided at the forward, under autocast)


def linear_forward(x, weight, bias=None):
    bf16 = autocast_active(x)
    product = reference_matmul(bf16)                         # bf16 operands under autocast, else @
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])                         # 1. (..., IN) -> (N, IN)
    out = product(x2d, weight.T)                             # 2. (N, IN) @ (IN, OUT) -> (N, OUT)
    if bias is not None:
        out += bias                                          # 3. (N, OUT) + (OUT,)
    return out.reshape(lead + (weight.shape[0],)), LinearCache(x2d, weight, bias is not None, bf16)


def linear_backward(dout, cache):
    x2d, weight, has_bias, bf16 = cache
    product = reference_matmul(bf16)                         # the forward's choice
    dout2d = dout.reshape(-1, weight.shape[0])               # (..., OUT) -> (N, OUT)
    # 3. out += bias
    dbias = dout2d.sum(axis=0) if has_bias else None         # (N, OUT) -> (OUT,)
    # 2. out = x2d @ weight.T
    dx2d = product(dout2d, weight)                           # (N, OUT) @ (OUT, IN) -> (N, IN)
    dweight = product(dout2d.T, x2d)                         # (OUT, N) @ (N, IN) -> (OUT, IN)
    # 1. x2d = x.reshape(N, IN)
    dx = dx2d.reshape(dout.shape[:-1] + (weight.shape[1],))  # (N, IN) -> (..., IN)
    return dx, dweight, dbias


def linear(x, weight, bias=None):
    forward, backward = resolve(linear_forward, linear_backward, x.data)
    out, cache = forward(x.data, autocast_weight(weight), None if bias is None else bias.data)
    return record(out, (x, weight, bias), lambda dout: backward(dout, cache), "linear")
