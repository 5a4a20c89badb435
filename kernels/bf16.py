"""numba-mode twin of numgpt.bf16.matmul_bf16: bf16 matrix products with
float32 accumulation, on the path this CPU has (``bf16_path()``, decided
once per process by kernels/bf16_detect.py):

- ``amx``, ``avx512_bf16``: both operands rounded to bf16 while they are
  packed, the products on the matrix unit (kernels/bf16_units.py: the loop
  nest, the tile and register budgets, the operand layouts);
- ``emulated``: each float32 operand rounded to bf16 in one numba pass
  (``bf16_units.round_flat``, into a new float32 array: no NumPy
  temporaries), then the float32 product (numgpt.kernels.matmul.matmul, or
  the BLAS where that kernel does not run). Exactly the reference's
  operands; the sums differ from it only in float32 accumulation order.

Operands that are not float32 (float64 gradient checks) take the reference.

The weight cache's copies (``weight_copy``): numgpt.precision rounds each
weight once per optimizer step. On the matrix units' paths the copy is the
weight's bf16 bits (uint16, as PyTorch's autocast cache keeps bf16 weights:
half the memory of a rounded float32 copy, and half the bytes for the
packing to read); ``matmul_bf16`` takes such a B operand as it is (the
forward's ``W.T``, the input gradient's ``W``). On the emulated path the copy
is the rounded float32, which the float32 products read.
"""
import numpy
from numgpt.kernels import bf16_units
from numgpt.kernels.bf16_detect import BF16Path, bf16_path  # noqa: F401  (the path's public name is here)
from numgpt.kernels.matmul import matmul

from numgpt.bf16 import from_bf16_bits
from numgpt.bf16 import matmul_bf16 as reference_matmul_bf16


def rounded(x):
    """float32 ``x`` rounded to bf16, as a new float32 array of the same shape and strides'
    order (a transposed view stays a transposed view, so the product's kernel sees it as such)."""
    if x.flags.c_contiguous:
        storage, flip = x, False
    elif x.ndim >= 2 and x.swapaxes(-1, -2).flags.c_contiguous:
        storage, flip = x.swapaxes(-1, -2), True
    else:
        storage, flip = numpy.ascontiguousarray(x), False
    result = numpy.empty_like(storage)
    bf16_units.round_flat(storage.reshape(-1), result.reshape(-1))
    return result.swapaxes(-1, -2) if flip else result


def weight_copy(weight, spare=None):
    """The weight cache's copy of the float32 array ``weight`` on this process's path (module
    docstring): its bf16 bits (uint16) on the matrix units' paths, its rounding (float32) on the
    emulated one; written into ``spare`` when that is a C-contiguous array of the right shape and
    dtype (a free copy of the last step), else into a new array."""
    if bf16_path().name == "emulated":
        dtype, fill = numpy.float32, bf16_units.round_flat
    else:
        dtype, fill = numpy.uint16, bf16_units.bits_flat
    source = numpy.ascontiguousarray(weight)
    if spare is None or spare.shape != weight.shape or spare.dtype != dtype or not spare.flags.c_contiguous:
        spare = numpy.empty(weight.shape, dtype=dtype)
    fill(source.reshape(-1), spare.reshape(-1))
    return spare


def _widened(x):
    """bf16 bits (uint16) as float32; any other array as it is."""
    return from_bf16_bits(x) if x.dtype == numpy.uint16 else x


def _stackable(a, b, out):
    """Whether ``a @ b`` (into ``out``) fits the kernels: float32 (..., M, K) @ (..., K, N) (B may
    be bf16 bits, uint16) with the same leading axes, and an ``out`` of the product's shape,
    float32, sharing no memory with them."""
    if a.dtype != numpy.float32 or b.dtype not in (numpy.float32, numpy.uint16) or a.ndim < 2 or b.ndim != a.ndim:
        return False
    if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        return False
    return out is None or (out.shape == a.shape[:-1] + b.shape[-1:] and out.dtype == numpy.float32
                           and not numpy.may_share_memory(out, a) and not numpy.may_share_memory(out, b))


def matmul_bf16(a, b, out=None):
    """``round_to_bf16(a) @ round_to_bf16(b)`` in float32, as numgpt.bf16.matmul_bf16, on this
    process's bf16 path (module docstring); ``b`` may also be bf16 bits (uint16, ``weight_copy``)."""
    if not _stackable(a, b, out):
        return reference_matmul_bf16(a, _widened(b), out=out)
    path = bf16_path().name
    if path == "emulated":
        return matmul(rounded(a), rounded(_widened(b)), out=out)
    return bf16_units.packed_product(bf16_units.compiled_kernel(path), a, b, out=out)


def product_of(bf16):
    """The product the numba twins run: this module's bf16 product under autocast (decided at the
    op's forward, numgpt.precision.autocast_active), else numgpt's float32 matmul."""
    return matmul_bf16 if bf16 else matmul
