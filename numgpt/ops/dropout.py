"""Inverted dropout: zero each element with probability p and scale the rest
by 1/(1-p), so that evaluation needs no rescaling. The mask comes from
numgpt's seeded generator and is kept as one byte per element.

Shapes: x (...), mask.keep (...) bool, out (...); s = 1 / (1 - p).

Forward, one step (DropoutMask.apply):

    1. out = x * keep * s                  keep[i] = 1 with probability 1 - p, else 0

Backward. For a fixed mask, out is linear in x and element-wise:
d out[i] / d x[i] = keep[i] * s, and 0 across elements. So

    1. dx = dout * keep * s                (...)

the same mask and the same scale, applied to dout: a dropped element had no
effect on the loss and gets no gradient; a kept one passes its gradient on,
scaled by s as its value was. The mask is the whole cache: it must be the one
the forward drew, never a fresh draw.

Why "inverted", and why evaluation needs no rescaling. Over the random mask,

    E[out[i]] = x[i] * (1 - p) * s = x[i]

so the training-time output already has the scale of the undropped input.
In evaluation (or with p = 0) dropout is the identity, out = x, with nothing
to rescale and nothing recorded. (The original dropout paper scales at
evaluation time instead, multiplying by 1 - p.)
"""
from typing import NamedTuple

import numpy

from numgpt import backend
from numgpt.autograd import record
from numgpt.device import like as on_device_of
from numgpt.device import array_module
from numgpt.registry import resolve


class DropoutMask(NamedTuple):
    keep: numpy.ndarray      # (...) bool: True where the element survives
    scale: float             # 1 / (1 - p)

    def apply(self, x):
        """x * keep / (1 - p), in x's dtype."""
        out = array_module(x).multiply(x, self.keep, dtype=x.dtype)
        out *= x.dtype.type(self.scale)
        return out


def dropout_mask(shape, p, like=None):
    """Keep each element with probability 1 - p, drawn from numgpt's generator:
    one raw 32-bit draw per element against p * 2^32 (exact to 2^-32). The
    draws are made on the host, so a model on a CUDA device drops exactly what
    it drops on the CPU; the mask (one byte per element) is then copied to the
    device of ``like``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    size = int(numpy.prod(shape))
    bits = backend.get_generator().bit_generator.random_raw((size + 1) // 2)      # uint64, two draws each
    draws = bits.view(numpy.uint32)[:size].reshape(shape)
    keep = draws >= numpy.uint32(min(round(p * 2.0 ** 32), 2 ** 32 - 1))
    return DropoutMask(keep if like is None else on_device_of(keep, like), 1.0 / (1.0 - p))


def dropout_forward(x, mask):
    return mask.apply(x), mask                   # 1. out = x * keep * scale (...)


def dropout_backward(dout, cache):
    mask = cache
    # 1. out = x * keep * scale: linear in x, so dx = dout * keep * scale (same mask)
    return mask.apply(dout)


def dropout(x, p, training):
    if not training or p == 0.0:
        return x
    forward, backward = resolve(dropout_forward, dropout_backward, x.data)
    out, cache = forward(x.data, dropout_mask(x.shape, p, like=x.data))
    return record(out, (x,), lambda dout: (backward(dout, cache),), "dropout")
