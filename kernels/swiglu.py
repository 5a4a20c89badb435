"""numba-mode twin of numgpt.ops.swiglu.swiglu_linear: the same steps, with the
down projection's products on the linear twin (kernels/linear.py)."""
from numgpt.kernels import linear
from numgpt.ops.linear import LinearCache
from numgpt.ops.swiglu import SwiGLULinearCache, swiglu_backward, swiglu_forward


def swiglu_linear_forward(gate, up, weight, bias=None):
    h, swiglu_cache = swiglu_forward(gate, up)                      # (..., F)
    out, linear_cache = linear.linear_forward(h, weight, bias)      # (..., C); h is not kept
    return out, SwiGLULinearCache(swiglu_cache, weight, bias is not None, linear_cache.bf16)


def swiglu_linear_backward(dout, cache):
    h, _ = swiglu_forward(*cache.swiglu)                            # recomputed (..., F)
    dh, dweight, dbias = linear.linear_backward(dout, LinearCache(h.reshape(-1, h.shape[-1]), cache.weight,
                                                                  cache.has_bias, cache.bf16))
    dgate, dup = swiglu_backward(dh, cache.swiglu)
    return dgate, dup, dweight, dbias
