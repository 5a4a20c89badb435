"""bfloat16 as numgpt stores and rounds it: the NumPy reference.

bfloat16 is float32's upper half: the same sign bit and 8-bit exponent (the
same range), 7 stored mantissa bits instead of 23 (about 3 decimal digits).
NumPy has no bfloat16 dtype, so numgpt keeps bf16 values in two forms:

- rounded float32: a float32 array whose low 16 bits are zero, i.e. exactly
  a bf16 value (``round_to_bf16``); what the emulated products compute on;
- bf16 bits: a uint16 array holding the upper halves (``to_bf16_bits``,
  ``from_bf16_bits``), half the memory; what ``bf16-true`` weights and
  safetensors' ``BF16`` tensors are.

Rounding is round-to-nearest, ties to even, as the CPU's conversion
instructions (VCVTNE2PS2BF16) and ``ml_dtypes.bfloat16`` do. Derivation, on
the float32 bit pattern ``u`` of a finite value: the kept part is
``u >> 16``, the dropped part ``d = u & 0xFFFF``. Round up when
``d > 0x8000``, or when ``d == 0x8000`` (a tie) and the kept part is odd.
Adding ``0x7FFF + ((u >> 16) & 1)`` to ``u`` carries into bit 16 exactly in
those cases; a carry out of the mantissa steps the exponent (the right
result, up to infinity for values past bf16's largest finite). NaN is
kept a NaN (quiet, same sign) instead of being carried into infinity.
"""
import numpy

_KEEP_HIGH = numpy.uint32(0xFFFF0000)
_QUIET_NAN_BIT = numpy.uint32(0x00400000)


def _rounded_bits(x):
    """float32 bit patterns of ``x`` rounded to bf16 (low 16 bits zero)."""
    bits = numpy.asarray(x, dtype=numpy.float32, order="C").view(numpy.uint32)
    rounded = (bits + (numpy.uint32(0x7FFF) + ((bits >> 16) & numpy.uint32(1)))) & _KEEP_HIGH
    quiet_nan = (bits | _QUIET_NAN_BIT) & _KEEP_HIGH
    return numpy.asarray(numpy.where(numpy.isnan(bits.view(numpy.float32)), quiet_nan, rounded),
                         dtype=numpy.uint32)


def round_to_bf16(x):
    """``x`` (any float array) rounded to the nearest bf16, as float32 (same shape)."""
    return _rounded_bits(x).view(numpy.float32)


def to_bf16_bits(x):
    """``x`` rounded to bf16, as its uint16 bit patterns (same shape)."""
    return (_rounded_bits(x) >> 16).astype(numpy.uint16)


def from_bf16_bits(bits):
    """uint16 bf16 bit patterns as float32 (exact: bf16 widens without rounding)."""
    bits = numpy.asarray(bits)
    if bits.dtype != numpy.uint16:
        raise TypeError(f"bf16 bits must be uint16, got {bits.dtype}")
    return (bits.astype(numpy.uint32) << 16).view(numpy.float32)


def matmul_bf16(a, b, out=None):
    """``a @ b`` as a bf16 matrix unit computes it: both operands rounded to
    bf16, products and sums in float32 (float32 result). The reference that
    numgpt's bf16 kernels (numgpt.kernels.bf16) are checked against; rounding
    an operand that is already bf16 changes nothing, so a cached rounded
    weight can be passed as it is."""
    return numpy.matmul(round_to_bf16(a), round_to_bf16(b), out=out)
