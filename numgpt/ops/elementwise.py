"""Element-wise ops: add and multiply with broadcasting, and the full sum."""
import numpy

from numgpt.autograd import Tensor, as_tensor, record
from numgpt.registry import resolve


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched to reach ``shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(extra))) if extra else grad
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True) if stretched else grad


# ------------------------------------------------------------------ add
def add_forward(a, b):
    out = a + b                       # broadcast(a, b)
    return out, (a.shape, b.shape)


def add_backward(dout, cache):
    a_shape, b_shape = cache
    # out = a + b
    return unbroadcast(dout, a_shape), unbroadcast(dout, b_shape)


def add(a, b):
    a, b = as_tensor(a), as_tensor(b)
    forward, backward = resolve(add_forward, add_backward)
    out, cache = forward(a.data, b.data)
    return record(out, (a, b), lambda dout: backward(dout, cache), "add")


# ------------------------------------------------------------------ mul
def mul_forward(a, b):
    out = a * b                       # broadcast(a, b)
    return out, (a, b)


def mul_backward(dout, cache):
    a, b = cache
    # out = a * b
    da = unbroadcast(dout * b, numpy.shape(a))
    db = unbroadcast(dout * a, numpy.shape(b))
    return da, db


def mul(a, b):
    """a * b; a Python scalar stays a scalar (no float64 array is made of it)."""
    if not isinstance(b, Tensor) and numpy.isscalar(b):
        scale = a.dtype.type(b)
        return record(a.data * scale, (a,), lambda dout: (dout * scale,), "scale")
    a, b = as_tensor(a), as_tensor(b)
    forward, backward = resolve(mul_forward, mul_backward)
    out, cache = forward(a.data, b.data)
    return record(out, (a, b), lambda dout: backward(dout, cache), "mul")


# ------------------------------------------------------------------ sum
def sum_all(x):
    """The sum of every element, as a 0-d tensor."""
    shape = x.shape
    out = x.data.sum(dtype=x.dtype)
    return record(numpy.asarray(out), (x,), lambda dout: (numpy.broadcast_to(dout, shape),), "sum")
