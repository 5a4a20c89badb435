"""Fused epilogues: the element-wise steps that follow a matrix product or
close a residual connection, as one op each, so that the numba kernels pass
over the activations once each way where the op-by-op path passes two or
three times (each element-wise op reads its input from memory and writes its
output back; a fused op reads the inputs once and writes the outputs once).

Three fused ops, each defined as a composition of numgpt's reference ops:

    linear_gelu(x, W, b)       = gelu(linear(x, W, b))                 bias + GELU
    dropout_add(x, y, p)       = x + dropout(y, p)                     dropout with its neighbour
    dropout_add_layer_norm(x, y, p, w, b)
                               = (s, layer_norm(s, w, b)),             the residual add with the
                                 s = x + dropout(y, p)                 LayerNorm that reads it

Shapes: x, y, s and the LayerNorm's output (..., C); linear_gelu's x (..., IN),
W (F, IN), b (F,) and output (..., F).

The reference stays op by op. Each reference pair below calls the reference
ops one after the other, and is what a kernel twin (kernels/fused.py) must
reproduce. The tape wrappers record a fused op only when its twin runs
(``registry.fused``: kernel mode numba, arrays on the host, and no learner's
backward in force for one of its parts); otherwise they call the ops one by
one, so that the NumPy path records, checks and trains exactly as it did
before, and ``use_backward("layer_norm", ...)`` still reaches every LayerNorm.

The backward of each, read from its parts:

    linear_gelu:   dh = gelu_backward(dout) = dout * gelu'(h)      h = x W^T + b, kept
                   dx, dW, db = linear_backward(dh)                db = sum over rows of dh
    dropout_add:   out = x + dropped: add passes dout to both      dx = dout
                   dropped = y * keep * scale                      dy = dout * keep * scale
    dropout_add_layer_norm: s feeds two consumers, the residual stream (gradient
                   ds_res, the gradient of output 0) and the LayerNorm (gradient
                   dn of output 1), so its gradient is their sum (the fan-out sum):
                   ds = ds_res + layer_norm_backward(dn)
                   then dx, dy as dropout_add's, from ds.

The last one has two outputs: it is recorded as one node with two output
tensors (``autograd.record_outputs``), so that its backward receives both
gradients and makes the fan-out sum in the same pass as the LayerNorm's
backward, where the op-by-op path makes it as a separate pass in the autograd.
Its reference backward takes None for an output that no path from the loss used.
"""
from typing import NamedTuple, Optional

import numpy

from numgpt.autograd import record, record_outputs
from numgpt.ops.dropout import DropoutMask, dropout, dropout_backward, dropout_forward, dropout_mask
from numgpt.ops.elementwise import add_backward, add_forward
from numgpt.ops.gelu import gelu, gelu_backward, gelu_forward
from numgpt.ops.layer_norm import EPS, LayerNormCache, layer_norm, layer_norm_backward, layer_norm_forward
from numgpt.ops.linear import LinearCache, linear, linear_backward, linear_forward
from numgpt.precision import autocast_weight
from numgpt.registry import fused


# ---------------------------------------------------------------- bias + GELU
class LinearGELUCache(NamedTuple):
    linear: LinearCache      # x2d (N, IN), weight (F, IN), has_bias
    gelu: numpy.ndarray      # h = x W^T + b (..., F), GELU's input


def linear_gelu_forward(x, weight, bias=None):
    h, linear_cache = linear_forward(x, weight, bias)              # 1. h = x W^T + b (..., IN) -> (..., F)
    out, gelu_cache = gelu_forward(h)                              # 2. out = gelu(h)  (..., F)
    return out, LinearGELUCache(linear_cache, gelu_cache)


def linear_gelu_backward(dout, cache):
    dh = gelu_backward(dout, cache.gelu)                           # 2. dh = dout * gelu'(h)  (..., F)
    return linear_backward(dh, cache.linear)                       # 1. dx, dweight, dbias


def linear_gelu(x, weight, bias=None):
    """gelu(linear(x, weight, bias)): x (..., IN), weight (F, IN), bias (F,) -> (..., F)."""
    twins = fused(linear_gelu_forward, ("linear", "gelu"), x.data)
    if twins is None:
        return gelu(linear(x, weight, bias))                       # op by op
    out, cache = twins.forward(x.data, autocast_weight(weight), None if bias is None else bias.data)
    return record(out, (x, weight, bias), lambda dout: twins.backward(dout, cache), "linear_gelu")


# ---------------------------------------------------------------- dropout + residual add
def dropout_add_forward(x, y, mask=None):
    dropped = y if mask is None else dropout_forward(y, mask)[0]   # 1. y * keep * scale  (..., C)
    out, _ = add_forward(x, dropped)                               # 2. x + dropped       (..., C)
    return out, mask


def dropout_add_backward(dout, cache):
    mask = cache
    dx, ddropped = add_backward(dout, (dout.shape, dout.shape))    # 2. both get dout
    dy = ddropped if mask is None else dropout_backward(ddropped, mask)   # 1. dout * keep * scale
    return dx, dy


def _residual_mask(x, y, p, training):
    """The dropout mask of y (None when nothing is dropped), drawn as ops.dropout draws it."""
    if x.shape != y.shape:
        raise ValueError(f"a residual add needs two tensors of one shape, got {x.shape} and {y.shape}")
    return dropout_mask(y.shape, p, like=y.data) if training and p != 0.0 else None


def dropout_add(x, y, p, training):
    """x + dropout(y, p, training), x and y (..., C) of one shape: a residual connection."""
    twins = fused(dropout_add_forward, ("dropout", "add"), x.data)
    if twins is None:
        return x + dropout(y, p, training)                         # op by op
    mask = _residual_mask(x, y, p, training)
    out, cache = twins.forward(x.data, y.data, mask)
    return record(out, (x, y), lambda dout: twins.backward(dout, cache), "dropout_add")


# ---------------------------------------------------------------- dropout + residual add + LayerNorm
class DropoutAddLayerNormCache(NamedTuple):
    mask: Optional[DropoutMask]        # y's keep mask (..., C), or None
    layer_norm: LayerNormCache         # s (..., C), weight (C,), mean and rstd (..., 1)


def dropout_add_layer_norm_forward(x, y, mask, weight, bias, eps=EPS):
    s, mask = dropout_add_forward(x, y, mask)                      # 1.-2. s = x + y * keep * scale
    out, layer_norm_cache = layer_norm_forward(s, weight, bias, eps)   # 3. LayerNorm of s  (..., C)
    return (s, out), DropoutAddLayerNormCache(mask, layer_norm_cache)


def dropout_add_layer_norm_backward(douts, cache):
    ds, dout = douts                                               # gradients of s and of the LayerNorm's output
    dweight = dbias = None
    if dout is not None:
        ds_norm, dweight, dbias = layer_norm_backward(dout, cache.layer_norm)    # 3.
        ds = ds_norm if ds is None else ds + ds_norm               # s feeds both: the fan-out sum
    if ds is None:
        return None, None, None, None
    dx, dy = dropout_add_backward(ds, cache.mask)                  # 2.-1.
    return dx, dy, dweight, dbias


def dropout_add_layer_norm(x, y, p, training, weight, bias, eps=EPS):
    """(s, layer_norm(s, weight, bias)) with s = x + dropout(y, p, training): the
    residual add and the LayerNorm that reads the new stream; x, y (..., C)."""
    twins = fused(dropout_add_layer_norm_forward, ("dropout", "add", "layer_norm"), x.data)
    if twins is None:
        s = x + dropout(y, p, training)                            # op by op
        return s, layer_norm(s, weight, bias, eps)
    mask = _residual_mask(x, y, p, training)
    outs, cache = twins.forward(x.data, y.data, mask, weight.data, bias.data, eps)
    return record_outputs(outs, (x, y, weight, bias), lambda douts: twins.backward(douts, cache),
                          "dropout_add_layer_norm")
