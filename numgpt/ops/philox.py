"""Philox4x32-10, a counter-based random number generator, and attention's
dropout drawn from it.

Why counter-based. Dropout on attention's weights needs one random draw per
element of the (B, NH, T, T) weights. Drawn from a sequential generator, the
draws must be made (and kept, one byte each) before the attention runs; a
kernel that works on one tile of the weights at a time could not regenerate
its own part of them. Philox (Salmon, Moraes, Dror and Shaw, "Parallel
random numbers: as easy as 1, 2, 3", SC 2011; the Random123 library) is a
function instead: 128 random bits = philox(counter, key), for any counter, in
any order, on any device. A tile regenerates exactly its own draws from
their counters and keeps nothing.

The function, on 32-bit words (all arithmetic modulo 2^32):

    counter (c0, c1, c2, c3), key (k0, k1)
    10 rounds; round r (r = 0 .. 9) uses the key bumped r times,
        k0 + r * 0x9E3779B9, k1 + r * 0xBB67AE85     (the golden ratio and sqrt(3) - 1, as 32-bit fractions)
    one round:
        hi0, lo0 = the high and low words of the 64-bit product 0xD2511F53 * c0
        hi1, lo1 = the high and low words of the 64-bit product 0xCD9E8D57 * c2
        (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
    the output is the counter after the tenth round: four 32-bit words.

The 32 x 32 -> 64-bit products are made in uint64 (exact: both factors are
below 2^32), so NumPy needs no wider integers; everything is vectorised over
as many counters as are asked for. tests/test_flash_attention.py checks this
code against Random123's published known-answer vectors.

The stream. Draw n (n = 0, 1, 2, ...) of the stream of a 64-bit ``key`` is

    word n % 4 of philox4x32_10(counter = (n // 4 mod 2^32, n // 4 div 2^32, 0, 0),
                                key = (key mod 2^32, key div 2^32))

so four consecutive draws share one evaluation (``philox_uniform_bits``).

Attention dropout (``AttentionDropout``). Element (b, h, i, j) of the
(B, NH, T, T) attention weights (batch b, query head h, query i, key j)
takes draw n = ((b * NH + h) * T + i) * T + j, its index in C order, and is
kept iff that draw is >= round(p * 2^32) (capped at 2^32 - 1): kept with
probability 1 - p to within 2^-32, the rule of ``numgpt.ops.dropout.dropout_mask``.
The key is one 64-bit draw from numgpt's generator per attention call, so a
seed still gives one run, whatever the device or the kernel.
"""
from typing import NamedTuple

import numpy

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57     # the round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85     # the key bumps (Weyl sequence)
PHILOX_ROUNDS = 10
_LOW = numpy.uint64(0xFFFFFFFF)
_32 = numpy.uint64(32)


def _mulhilo(multiplier, x):
    """(high word, low word) of the 64-bit product multiplier * x, x uint32 -> two uint32 arrays."""
    product = numpy.uint64(multiplier) * x.astype(numpy.uint64)          # < 2^64: exact
    return (product >> _32).astype(numpy.uint32), (product & _LOW).astype(numpy.uint32)


def philox4x32_10(counter, key):
    """Philox4x32-10: counter (..., 4) uint32 words (c0, c1, c2, c3), key (k0, k1) two 32-bit
    integers -> (..., 4) uint32, four random words per counter."""
    counter = numpy.asarray(counter, dtype=numpy.uint32)
    c0, c1, c2, c3 = (counter[..., w] for w in range(4))
    k0, k1 = int(key[0]), int(key[1])
    for r in range(PHILOX_ROUNDS):
        key0 = numpy.uint32((k0 + r * PHILOX_W0) & 0xFFFFFFFF)            # the key bumped r times
        key1 = numpy.uint32((k1 + r * PHILOX_W1) & 0xFFFFFFFF)
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ key0, lo1, hi0 ^ c3 ^ key1, lo0
    return numpy.stack([c0, c1, c2, c3], axis=-1)


def key_words(key):
    """A 64-bit key -> (k0, k1): its low and high 32-bit words."""
    key = int(key)
    return key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF


def philox_uniform_bits(key, size):
    """Draws 0 .. size - 1 of the stream of the 64-bit ``key``: (size,) uint32, uniform on [0, 2^32)."""
    blocks = numpy.arange((size + 3) // 4, dtype=numpy.uint64)           # block n // 4 holds draws 4 (n // 4) + 0..3
    counter = numpy.zeros(blocks.shape + (4,), dtype=numpy.uint32)
    counter[:, 0] = (blocks & _LOW).astype(numpy.uint32)
    counter[:, 1] = (blocks >> _32).astype(numpy.uint32)
    return philox4x32_10(counter, key_words(key)).reshape(-1)[:size]      # word n % 4 of block n // 4


def keep_threshold(p):
    """The smallest 32-bit draw that keeps an element: round(p * 2^32), capped at 2^32 - 1."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return min(round(p * 2.0 ** 32), 2 ** 32 - 1)


class AttentionDropout(NamedTuple):
    """Dropout on attention's weights, as a rule rather than a mask: element (b, h, i, j)
    is kept iff Philox draw ((b * NH + h) * T + i) * T + j of ``key`` is >= keep_threshold(p);
    the kept weights are scaled by 1 / (1 - p)."""
    p: float                 # the drop probability, in [0, 1)
    key: int                 # 64-bit Philox key, one draw from numgpt's generator per attention call

    @property
    def scale(self):
        return 1.0 / (1.0 - self.p)

    def keep(self, B, NH, T):
        """The keep mask (B, NH, T, T) bool on the host: True where the weight survives."""
        draws = philox_uniform_bits(self.key, B * NH * T * T).reshape(B, NH, T, T)   # draw n at its C-order index
        return draws >= numpy.uint32(keep_threshold(self.p))
