"""RMSNorm over the last axis (Llama, Qwen, SmolLM2): LayerNorm without the
mean and without the bias, as Hugging Face's ``LlamaRMSNorm``.

Shapes: x (..., C), weight (C,), out (..., C); rstd (..., 1). Each row of C
channels is scaled on its own; below, x is one row and mean(.) is the mean
over its C channels. Qwen3 applies the same op to each head of the queries
and keys: x (B, T, NH, HS), weight (HS,).

Forward, as numbered in the code:

    1. ms   = mean(x * x)                 (C,) -> ()   the mean square
    2. rstd = (ms + eps)^(-1/2)           ()
    3. xhat = x * rstd                    (C,)
    4. out  = xhat * weight               (C,)

Backward, the same steps in reverse (dv means dL/dv):

    4. dxhat = dout * weight (C,). The weight is used by every row, so
       dweight = sum over rows of dout * xhat (C,).
    3. xhat_j = x_j * rstd reaches x by two paths: directly, and through
       rstd, which every xhat_j shares:
           dx_j  = dxhat_j * rstd   (+ the rstd path)
           drstd = sum_j dxhat_j x_j
    2. d rstd / d ms = -1/2 (ms + eps)^(-3/2) = -rstd^3 / 2
    1. d ms / d x_i = 2 x_i / C, so the rstd path adds
           drstd * (-rstd^3 / 2) * 2 x_i / C = -(rstd^3 / C) x_i sum_j dxhat_j x_j
       With x = xhat / rstd the powers of rstd cancel to one:

    dx = rstd * (dxhat - xhat * mean(dxhat * xhat))                   (..., C)

This is LayerNorm's backward without the ``- mean(dxhat)`` term: there is no
mean subtracted in the forward, so x_i does not reach every output through it.
"""
from typing import NamedTuple

import numpy

from numgpt.autograd import record
from numgpt.device import array_module
from numgpt.registry import resolve

EPS = 1e-6        # Llama 3's and Qwen's rms_norm_eps; a model's config.json names its own


class RMSNormCache(NamedTuple):
    x: numpy.ndarray         # (..., C)
    weight: numpy.ndarray    # (C,)
    rstd: numpy.ndarray      # (..., 1)


def rms_norm_forward(x, weight, eps=EPS):
    ms = (x * x).mean(axis=-1, keepdims=True)                       # 1. (..., C) -> (..., 1)
    rstd = 1.0 / array_module(x).sqrt(ms + x.dtype.type(eps))       # 2. (..., 1)
    xhat = x * rstd                                                 # 3. (..., C)
    out = xhat * weight                                             # 4. (..., C)
    return out, RMSNormCache(x, weight, rstd)


def rms_norm_backward(dout, cache):
    x, weight, rstd = cache
    xhat = x * rstd                                                 # 3. recomputed (..., C)
    lead_axes = tuple(range(dout.ndim - 1))
    # 4. out = xhat * weight
    dweight = (dout * xhat).sum(axis=lead_axes)                     # (C,)
    dxhat = dout * weight                                           # (..., C)
    # 3. xhat = x * rstd              -> dx = rstd * dxhat, plus the path through rstd:
    # 2. rstd = (ms + eps)^(-1/2)     -> d rstd/d ms = -rstd^3 / 2
    # 1. ms = mean(x * x)             -> d ms/d x = 2 x / C; with x = xhat / rstd:
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))   # (..., C)
    return dx, dweight


def rms_norm(x, weight, eps=EPS):
    forward, backward = resolve(rms_norm_forward, rms_norm_backward, x.data)
    out, cache = forward(x.data, weight.data, eps)
    return record(out, (x, weight), lambda dout: backward(dout, cache), "rms_norm")
