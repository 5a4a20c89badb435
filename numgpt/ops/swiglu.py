"""SwiGLU, the gate of Llama's feed-forward: silu(gate) * up.

The MLP around it is ``down_proj(swiglu(gate_proj(x), up_proj(x)))``: two
projections of the same input, one squashed into a gate for the other.

Shapes: gate, up, out (..., F), F = intermediate_size.

Forward, elementwise, as numbered in the code:

    1. sig  = 1 / (1 + exp(-gate))        the logistic sigmoid
    2. silu = gate * sig                  SiLU ("swish")
    3. out  = silu * up

Backward (dv means dL/dv):

    3. dup   = dout * silu                dsilu = dout * up
    2. d silu / d gate = sig + gate * d sig / d gate, and the sigmoid's
       derivative is sig * (1 - sig), so
           d silu / d gate = sig * (1 + gate * (1 - sig))
    1. collected: dgate = dout * up * sig * (1 + gate * (1 - sig))

The cache keeps gate and up only: the backward recomputes the sigmoid (one
exp per element) rather than holding a third (..., F) array per layer until
the backward pass, the largest activation of a Llama block.

For a very negative gate, exp(-gate) overflows to inf in float32 and sig
becomes exactly 0, which is the right limit: silu and its derivative both
go to 0 there. NumPy's overflow warning is silenced for that reason.
"""
from typing import NamedTuple

import numpy

from numgpt.autograd import record
from numgpt.device import array_module
from numgpt.ops.linear import LinearCache, linear_backward, linear_forward
from numgpt.precision import autocast_weight
from numgpt.registry import resolve


class SwiGLUCache(NamedTuple):
    gate: numpy.ndarray      # (..., F)
    up: numpy.ndarray        # (..., F)


def sigmoid(x):
    xp = array_module(x)
    with numpy.errstate(over="ignore"):
        return 1.0 / (1.0 + xp.exp(-x))


def swiglu_forward(gate, up):
    sig = sigmoid(gate)                                             # 1. (..., F)
    out = gate * sig * up                                           # 2., 3. (..., F)
    return out, SwiGLUCache(gate, up)


def swiglu_backward(dout, cache):
    gate, up = cache
    sig = sigmoid(gate)                                             # 1. recomputed (..., F)
    dup = dout * gate * sig                                         # 3. d out / d up = silu
    dgate = dout * up * sig * (1.0 + gate * (1.0 - sig))            # 3., 2., 1. (..., F)
    return dgate, dup


def swiglu(gate, up):
    if gate.shape != up.shape:
        raise ValueError(f"swiglu needs gate and up of one shape, got {gate.shape} and {up.shape}")
    forward, backward = resolve(swiglu_forward, swiglu_backward, gate.data)
    out, cache = forward(gate.data, up.data)
    return record(out, (gate, up), lambda dout: backward(dout, cache), "swiglu")


# ---------------------------------------------------------------- SwiGLU into the down projection
# The MLP's last two steps, h = swiglu(gate, up) and out = h W^T + b, as one op that does not
# keep h (F values per token per layer, the largest activation of a Llama block) for the
# backward pass: the backward recomputes it from gate and up, which the SwiGLU backward needs
# anyway ("activation recomputation", the trade of one elementwise pass for the memory).
#
#   forward:   h = swiglu(gate, up)          (..., F)    swiglu_forward above
#              out = h W^T + b                (..., C)    numgpt/ops/linear.py
#   backward:  h again from gate and up;  dh, dW, db = linear's backward with h
#              dgate, dup = swiglu's backward of dh
class SwiGLULinearCache(NamedTuple):
    swiglu: SwiGLUCache      # gate, up (..., F)
    weight: numpy.ndarray    # (C, F)
    has_bias: bool
    bf16: bool = False       # the down projection's products take bf16 operands (autocast)


def swiglu_linear_forward(gate, up, weight, bias=None):
    h, swiglu_cache = swiglu_forward(gate, up)                      # (..., F)
    out, linear_cache = linear_forward(h, weight, bias)             # (..., C); h is not kept
    return out, SwiGLULinearCache(swiglu_cache, weight, bias is not None, linear_cache.bf16)


def swiglu_linear_backward(dout, cache):
    h, _ = swiglu_forward(*cache.swiglu)                            # recomputed (..., F)
    dh, dweight, dbias = linear_backward(dout, LinearCache(h.reshape(-1, h.shape[-1]), cache.weight,
                                                           cache.has_bias, cache.bf16))
    dgate, dup = swiglu_backward(dh, cache.swiglu)
    return dgate, dup, dweight, dbias


def swiglu_linear(gate, up, weight, bias=None):
    """down(swiglu(gate, up)): gate, up (..., F), weight (C, F), bias (C,) -> (..., C)."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu needs gate and up of one shape, got {gate.shape} and {up.shape}")
    forward, backward = resolve(swiglu_linear_forward, swiglu_linear_backward, gate.data)
    out, cache = forward(gate.data, up.data, autocast_weight(weight), None if bias is None else bias.data)
    parents = (gate, up, weight) if bias is None else (gate, up, weight, bias)
    return record(out, parents, lambda dout: backward(dout, cache)[:len(parents)], "swiglu_linear")
