"""numba twin of numgpt.ops.philox: Philox4x32-10 on scalars, for kernels that
regenerate their dropout draws where they need them (kernels/attention.py).

The same function as the NumPy reference, word for word (its docstring has
the rounds and the constants): 32-bit words held in uint64 so that the
32 x 32 -> 64-bit products are exact, the low word kept with a mask.
tests/test_flash_attention.py checks it against the reference and against
Random123's known answers.

Every value and constant here is uint64: numba gives float64 for an
operation that mixes int64 and uint64, so none may be mixed in.
"""
import numpy
from numba import njit

LOW = numpy.uint64(0xFFFFFFFF)
SHIFT = numpy.uint64(32)
M0, M1 = numpy.uint64(0xD2511F53), numpy.uint64(0xCD9E8D57)     # the round multipliers
W0, W1 = numpy.uint64(0x9E3779B9), numpy.uint64(0xBB67AE85)     # the key bumps


@njit(inline="always")
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """The four output words for counter (c0, c1, c2, c3) and key (k0, k1), every argument a
    uint64 below 2^32."""
    for _ in range(10):
        p0 = M0 * c0                                                # exact: both factors < 2^32
        p1 = M1 * c2
        c0, c1, c2, c3 = (p1 >> SHIFT) ^ c1 ^ k0, p1 & LOW, (p0 >> SHIFT) ^ c3 ^ k1, p0 & LOW
        k0, k1 = (k0 + W0) & LOW, (k1 + W1) & LOW                   # the key for the next round
    return c0, c1, c2, c3


@njit(inline="always")
def philox_block(block, k0, k1):
    """Draws 4 block .. 4 block + 3 of the stream of key (k0, k1) (block a uint64): the counter
    (block mod 2^32, block div 2^32, 0, 0)."""
    zero = numpy.uint64(0)
    return philox4x32_10(block & LOW, block >> SHIFT, zero, zero, k0, k1)
