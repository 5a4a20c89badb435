"""numba-mode twin of numgpt.ops.linear: the same three products on
numgpt's matmul kernel (kernels/matmul.py: AVX-512 where it runs, else
NumPy's BLAS), and the large weight gradient (the output head's (V, C))
written into a reused buffer (kernels/scratch.py).

Shapes and steps as in numgpt/ops/linear.py.
"""
import numpy

from numgpt.kernels.matmul import matmul
from numgpt.kernels.scratch import reusable
from numgpt.ops.linear import LinearCache


def linear_forward(x, weight, bias=None):
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])                         # 1. (..., IN) -> (N, IN)
    out = matmul(x2d, weight.T)                              # 2. (N, IN) @ (IN, OUT) -> (N, OUT)
    if bias is not None:
        out += bias                                          # 3. (N, OUT) + (OUT,)
    return out.reshape(lead + (weight.shape[0],)), LinearCache(x2d, weight, bias is not None)


def linear_backward(dout, cache):
    weight, has_bias = cache.weight, cache.has_bias
    dout2d = dout.reshape(-1, weight.shape[0])               # (..., OUT) -> (N, OUT)
    dbias = dout2d.sum(axis=0) if has_bias else None         # 3. (OUT,)
    dx, dweight = linear_backward_products(dout2d, cache)
    return dx.reshape(dout.shape[:-1] + (weight.shape[1],)), dweight, dbias


def linear_backward_products(dout2d, cache):
    """Step 2's gradients, dx (N, IN) and dweight (OUT, IN), from dout2d (N, OUT)."""
    x2d, weight, _ = cache
    dx = matmul(dout2d, weight)                              # 2. (N, OUT) @ (OUT, IN)
    dweight = matmul(dout2d.T, x2d, out=reusable("linear.dweight", weight.shape,
                                                 numpy.result_type(dout2d, x2d)))  # 2. (OUT, N) @ (N, IN)
    return dx, dweight
