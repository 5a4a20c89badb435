"""numba-mode twin of numgpt.bf16.matmul_bf16: bf16 matrix products with
float32 accumulation.

Emulated: the operands are rounded to bf16 (round-to-nearest-even) and the
product runs on numgpt's float32 matmul (kernels/matmul.py, or the BLAS), so
the result is the reference's within float32 accumulation order.
"""
from numgpt.bf16 import round_to_bf16
from numgpt.kernels.matmul import matmul


def matmul_bf16(a, b, out=None):
    """``round_to_bf16(a) @ round_to_bf16(b)`` in float32, as numgpt.bf16.matmul_bf16."""
    return matmul(round_to_bf16(a), round_to_bf16(b), out=out)
