"""numba-mode twin of numgpt.ops.linear: the same three products on
numgpt's matmul kernel (kernels/matmul.py: AVX-512 where it runs, else
NumPy's BLAS), and the large weight gradient (the output head's (V, C))
written into a reused buffer (kernels/scratch.py).

Shapes and steps as in numgpt/ops/linear.py. Under ``numgpt.autocast`` the
three products run on numgpt.kernels.bf16's matmul (bf16 operands, float32
sums), decided at the forward as in the reference.
"""
import numpy
from numgpt.kernels.bf16 import product_of
from numgpt.kernels.scratch import reusable

from numgpt.ops.linear import LinearCache
from numgpt.precision import autocast_active


def linear_forward(x, weight, bias=None):
    bf16 = autocast_active(x)
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])                         # 1. (..., IN) -> (N, IN)
    out = product_of(bf16)(x2d, weight.T)                 # 2. (N, IN) @ (IN, OUT) -> (N, OUT)
    if bias is not None:
        out += bias                                          # 3. (N, OUT) + (OUT,)
    return out.reshape(lead + (weight.shape[0],)), LinearCache(x2d, weight, bias is not None, bf16)


def linear_backward(dout, cache):
    weight, has_bias = cache.weight, cache.has_bias
    dout2d = dout.reshape(-1, weight.shape[0])               # (..., OUT) -> (N, OUT)
    dbias = dout2d.sum(axis=0) if has_bias else None         # 3. (OUT,)
    dx, dweight = linear_backward_products(dout2d, cache)
    return dx.reshape(dout.shape[:-1] + (weight.shape[1],)), dweight, dbias


def linear_backward_products(dout2d, cache):
    """Step 2's gradients, dx (N, IN) and dweight (OUT, IN), from dout2d (N, OUT)."""
    x2d, weight, _, bf16 = cache
    product = product_of(bf16)                            # the forward's choice
    dx = product(dout2d, weight)                             # 2. (N, OUT) @ (OUT, IN)
    dweight = product(dout2d.T, x2d, out=reusable("linear.dweight", weight.shape,
                                                 numpy.result_type(dout2d, x2d)))  # 2. (OUT, N) @ (N, IN)
    return dx, dweight
