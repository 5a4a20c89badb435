"""Element-wise ops: add and multiply with broadcasting, and the full sum.

Shapes: a and b broadcast to out's shape (NumPy's rule: align the shapes on
the right, pad the shorter one with leading 1s, stretch each axis of size 1).
E.g. x (B, T, C) + bias (C,) -> (B, T, C): bias[c] is used B*T times.

Broadcasting is fan-out: one value feeds many outputs. So its gradient is
the sum of the gradients of all the outputs it fed, the same fan-out sum as
a tensor used twice in the autograd. unbroadcast(grad, shape) does it:

    1. sum over the leading axes broadcasting added    (B, T, C) -> (C,)
    2. sum, keeping the axis, over each axis stretched from 1    (B, T, C) -> (B, 1, C)

so that a gradient has its variable's shape again.

add:  out = a + b        d out/da = d out/db = 1
      da = unbroadcast(dout, a.shape),  db = unbroadcast(dout, b.shape)
mul:  out = a * b        the product rule: d out/da = b, d out/db = a
      da = unbroadcast(dout * b, a.shape),  db = unbroadcast(dout * a, b.shape)
      (a Python scalar factor is a constant: dx = dout * scale, nothing to sum)
sum:  out = sum_i x[i]   () ;  d out/dx[i] = 1 for every i, so
      dx = dout broadcast to x's shape (a view). Sum and broadcast are each
      other's backward.
"""
import numpy

from numgpt.autograd import Tensor, as_tensor, record
from numgpt.device import array_module
from numgpt.registry import resolve


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched to reach ``shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(extra))) if extra else grad          # 1. leading axes added
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True) if stretched else grad   # 2. axes stretched from 1


# ------------------------------------------------------------------ add
def add_forward(a, b):
    out = a + b                       # broadcast(a, b)
    return out, (a.shape, b.shape)


def add_backward(dout, cache):
    a_shape, b_shape = cache
    # out = a + b: d out/da = d out/db = 1; each broadcast value sums its gradients
    return unbroadcast(dout, a_shape), unbroadcast(dout, b_shape)


def add(a, b):
    a, b = as_tensor(a), as_tensor(b)
    forward, backward = resolve(add_forward, add_backward, a.data)
    out, cache = forward(a.data, b.data)
    return record(out, (a, b), lambda dout: backward(dout, cache), "add")


# ------------------------------------------------------------------ mul
def mul_forward(a, b):
    out = a * b                       # broadcast(a, b)
    return out, (a, b)


def mul_backward(dout, cache):
    a, b = cache
    # out = a * b: the product rule, d out/da = b, d out/db = a
    da = unbroadcast(dout * b, a.shape)
    db = unbroadcast(dout * a, b.shape)
    return da, db


def mul(a, b):
    """a * b; a Python scalar stays a scalar (no float64 array is made of it)."""
    if not isinstance(b, Tensor) and numpy.isscalar(b):
        scale = a.dtype.type(b)
        return record(a.data * scale, (a,), lambda dout: (dout * scale,), "scale")
    a, b = as_tensor(a), as_tensor(b)
    forward, backward = resolve(mul_forward, mul_backward, a.data)
    out, cache = forward(a.data, b.data)
    return record(out, (a, b), lambda dout: backward(dout, cache), "mul")


# ------------------------------------------------------------------ sum
def sum_all(x):
    """The sum of every element, as a 0-d tensor."""
    shape = x.shape
    out = x.data.sum(dtype=x.dtype)          # (...) -> (); backward: every x[i] gets dout (a broadcast view)
    xp = array_module(x.data)
    return record(xp.asarray(out), (x,), lambda dout: (xp.broadcast_to(dout, shape),), "sum")
