"""LayerNorm over the last axis, as the seed's: biased variance, eps 1e-5,
parameters named ``scale`` and ``shift``.

Shapes: x (..., C), weight (C,), bias (C,), out (..., C); mean and rstd (...,).
"""
from typing import NamedTuple

import numpy

from numgpt.autograd import record
from numgpt.registry import resolve

EPS = 1e-5


class LayerNormCache(NamedTuple):
    x: numpy.ndarray         # (..., C)
    weight: numpy.ndarray    # (C,)
    mean: numpy.ndarray      # (..., 1)
    rstd: numpy.ndarray      # (..., 1)


def layer_norm_forward(x, weight, bias, eps=EPS):
    mean = x.mean(axis=-1, keepdims=True)                          # 1. (..., C) -> (..., 1)
    xc = x - mean                                                  # 2. (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)                   # 3. biased variance (..., 1)
    rstd = 1.0 / numpy.sqrt(var + x.dtype.type(eps))               # 4. (..., 1)
    xhat = xc * rstd                                               # 5. (..., C)
    out = xhat * weight + bias                                     # 6. (..., C)
    return out, LayerNormCache(x, weight, mean, rstd)


def layer_norm_backward(dout, cache):
    x, weight, mean, rstd = cache
    xhat = (x - mean) * rstd
    lead_axes = tuple(range(dout.ndim - 1))
    # 6. out = xhat * weight + bias
    dweight = (dout * xhat).sum(axis=lead_axes)                    # (C,)
    dbias = dout.sum(axis=lead_axes)                               # (C,)
    dxhat = dout * weight                                          # (..., C)
    # 5..1: xhat = (x - mean(x)) * rstd(x), folded into the standard closed form:
    #   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = rstd * (dxhat
                 - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dweight, dbias


def layer_norm(x, weight, bias, eps=EPS):
    forward, backward = resolve(layer_norm_forward, layer_norm_backward)
    out, cache = forward(x.data, weight.data, bias.data, eps)
    return record(out, (x, weight, bias), lambda dout: backward(dout, cache), "layer_norm")
