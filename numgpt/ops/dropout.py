"""Inverted dropout: zero each element with probability p and scale the rest
by 1/(1-p), so that evaluation needs no rescaling. The mask comes from
numgpt's seeded generator.

Shapes: x (...), mask (...) holding 0 or 1/(1-p), out (...).
"""
from numgpt import backend
from numgpt.autograd import record


def dropout_mask(shape, p, dtype):
    """An array of 0 (probability p) and 1/(1-p), drawn from numgpt's generator."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = backend.get_generator().random(shape, dtype=dtype) >= dtype.type(p)
    return keep * dtype.type(1.0 / (1.0 - p))


def dropout_forward(x, mask):
    return x * mask, mask


def dropout_backward(dout, cache):
    mask = cache
    # out = x * mask
    return dout * mask


def dropout(x, p, training):
    if not training or p == 0.0:
        return x
    out, cache = dropout_forward(x.data, dropout_mask(x.shape, p, x.dtype))
    return record(out, (x,), lambda dout: (dropout_backward(dout, cache),))
