"""LayerNorm over the last axis, as the seed's: biased variance, eps 1e-5,
parameters named ``scale`` and ``shift``.

Shapes: x (..., C), weight (C,), bias (C,), out (..., C); mean and rstd (..., 1).
Each row of C channels is normalised on its own; below, x is one row and
mean(.) is the mean over its C channels.

Forward, as numbered in the code:

    1. mean = mean(x)                      (C,) -> ()
    2. xc   = x - mean                     (C,)
    3. var  = mean(xc * xc)                ()   biased: divides by C
    4. rstd = (var + eps)^(-1/2)           ()
    5. xhat = xc * rstd                    (C,)
    6. out  = xhat * weight + bias         (C,)

Backward, the same steps in reverse (dv means dL/dv):

    6. dxhat = dout * weight (C,). weight and bias are used by every row, so
       dweight = sum over rows of dout * xhat, dbias = sum over rows of dout (C,).
    5. xhat_j = xc_j * rstd reaches xc by two paths: directly, and through
       rstd, which every xhat_j shares:
           dxc_j  = dxhat_j * rstd   (+ the rstd path, step 3)
           drstd  = sum_j dxhat_j xc_j
    4. d rstd / d var = -1/2 (var + eps)^(-3/2) = -rstd^3 / 2:
           dvar   = -rstd^3 / 2 * sum_j dxhat_j xc_j
    3. d var / d xc_j = 2 xc_j / C, so the rstd path adds dvar * 2 xc_j / C:
           dxc_j  = rstd dxhat_j - (rstd^3 / C) xc_j sum_m dxhat_m xc_m
       With xc = xhat / rstd the rstd powers cancel to one:
           dxc    = rstd * (dxhat - xhat * mean(dxhat * xhat))
    2., 1. xc_j = x_j - mean(x), so d xc_j / d x_i = delta_ij - 1/C (x_i reaches
       every xc_j through the mean): the gradient minus its mean,
           dx     = dxc - mean(dxc)
       and mean(dxc) = rstd * (mean(dxhat) - mean(xhat) * mean(dxhat * xhat))
                     = rstd * mean(dxhat), since mean(xhat) = 0 (xc has mean 0).

Collected, the closed form the code computes in one line:

    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))     (..., C)

A check: dx sums to 0 over each row (mean(xhat) = 0), as it must: adding a
constant to a row of x leaves xc, and so the output, unchanged.
"""
from typing import NamedTuple

import numpy

from numgpt.autograd import record
from numgpt.device import array_module
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
    rstd = 1.0 / array_module(x).sqrt(var + x.dtype.type(eps))               # 4. (..., 1)
    xhat = xc * rstd                                               # 5. (..., C)
    out = xhat * weight + bias                                     # 6. (..., C)
    return out, LayerNormCache(x, weight, mean, rstd)


def layer_norm_backward(dout, cache):
    x, weight, mean, rstd = cache
    xhat = (x - mean) * rstd                                       # 2., 5. recomputed (..., C)
    lead_axes = tuple(range(dout.ndim - 1))
    # 6. out = xhat * weight + bias
    dweight = (dout * xhat).sum(axis=lead_axes)                    # (C,)
    dbias = dout.sum(axis=lead_axes)                               # (C,)
    dxhat = dout * weight                                          # (..., C)
    # 5. xhat = xc * rstd                 -> dxc = rstd * dxhat, plus the path through rstd:
    # 4. rstd = (var + eps)^(-1/2)        -> d rstd/d var = -rstd^3 / 2
    # 3. var = mean(xc * xc)              -> d var/d xc = 2 xc / C; with xc = xhat / rstd:
    #                                        dxc = rstd * (dxhat - xhat * mean(dxhat * xhat))
    # 2., 1. xc = x - mean(x)             -> dx = dxc - mean(dxc); mean(xhat) = 0 leaves
    #                                        mean(dxc) = rstd * mean(dxhat). Collected (docstring):
    #   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))                (..., C)
    dx = rstd * (dxhat
                 - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dweight, dbias


def layer_norm(x, weight, bias, eps=EPS):
    forward, backward = resolve(layer_norm_forward, layer_norm_backward, x.data)
    out, cache = forward(x.data, weight.data, bias.data, eps)
    return record(out, (x, weight, bias), lambda dout: backward(dout, cache), "layer_norm")
