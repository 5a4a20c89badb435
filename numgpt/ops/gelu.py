"""GELU, tanh approximation (as the seed and GPT-2):
out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

Shapes: x (...), out (...); every element on its own, so the backward is
dx = dout * gelu'(x), element by element. With c = sqrt(2/pi), k = 0.044715,
forward as numbered in the code:

    1. u   = c (x + k x^3)             the inner polynomial
    2. t   = tanh(u)
    3. out = 0.5 x (1 + t)

Backward, the same steps in reverse (the chain rule, one factor per step):

    3. out = 0.5 x (1 + t) is a product of x and (1 + t), both functions of x:
           d out/dx = 0.5 (1 + t) + 0.5 x dt/dx
    2. tanh' = 1 - tanh^2, so           dt/du = 1 - t^2
    1.                                  du/dx = c (1 + 3 k x^2)

Multiplied together:

    gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 k x^2),   t = tanh(u)
    dx       = dout * gelu'(x)                                   (...)

Only x is cached; t is recomputed (one tanh) rather than stored.
"""
import math


from numgpt.autograd import record
from numgpt.device import array_module
from numgpt.registry import resolve

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715


def gelu_forward(x):
    c, k = x.dtype.type(SQRT_2_OVER_PI), x.dtype.type(CUBIC)
    u = c * (x + k * x * x * x)                                    # 1. inner polynomial
    t = array_module(x).tanh(u)                                              # 2.
    out = 0.5 * x * (1.0 + t)                                      # 3. (...)
    return out, x


def gelu_backward(dout, cache):
    x = cache
    c, k = x.dtype.type(SQRT_2_OVER_PI), x.dtype.type(CUBIC)
    t = array_module(x).tanh(c * (x + k * x * x * x))                       # 1., 2. recomputed
    # 3. out = 0.5 x (1 + t)         -> d/dx = 0.5 (1 + t) + 0.5 x dt/dx
    # 2. t = tanh(u)                 -> dt/du = 1 - t^2
    # 1. u = c (x + k x^3)           -> du/dx = c (1 + 3 k x^2)
    dudx = c * (1.0 + 3.0 * k * x * x)
    # dx = dout * (0.5 (1 + t) + 0.5 x (1 - t^2) du/dx)      (...)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dudx)


def gelu(x):
    forward, backward = resolve(gelu_forward, gelu_backward, x.data)
    out, cache = forward(x.data)
    return record(out, (x,), lambda dout: (backward(dout, cache),), "gelu")
