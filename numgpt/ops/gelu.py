"""GELU, tanh approximation (as the seed and GPT-2):
out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

Shapes: x (...), out (...).
"""
import math

import numpy

from numgpt.autograd import record
from numgpt.registry import resolve

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715


def gelu_forward(x):
    c, k = x.dtype.type(SQRT_2_OVER_PI), x.dtype.type(CUBIC)
    u = c * (x + k * x * x * x)                                    # 1. inner
    t = numpy.tanh(u)                                              # 2.
    out = 0.5 * x * (1.0 + t)                                      # 3.
    return out, x


def gelu_backward(dout, cache):
    x = cache
    c, k = x.dtype.type(SQRT_2_OVER_PI), x.dtype.type(CUBIC)
    t = numpy.tanh(c * (x + k * x * x * x))
    # 3. out = 0.5 x (1 + t)         -> d/dx = 0.5 (1 + t) + 0.5 x dt/dx
    # 2. t = tanh(u)                 -> dt/du = 1 - t^2
    # 1. u = c (x + k x^3)           -> du/dx = c (1 + 3 k x^2)
    dudx = c * (1.0 + 3.0 * k * x * x)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dudx)


def gelu(x):
    forward, backward = resolve(gelu_forward, gelu_backward)
    out, cache = forward(x.data)
    return record(out, (x,), lambda dout: (backward(dout, cache),), "gelu")
