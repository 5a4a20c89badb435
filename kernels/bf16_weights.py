"""numba twin of numgpt.nn.inference_bf16.linear_bf16_reference: ``x @ W^T + b``
with W kept as bf16 bits (uint16, PyTorch's (OUT, IN) layout), for
``--precision bf16-true`` inference.

Two regimes, by the number of rows M of x:

- decode (M <= DECODE_ROWS: one token per sequence of a small batch): a
  matrix-vector product, bound by reading W once; W is read as bf16 (half
  float32's bytes, the whole gain of bf16-true) and widened in registers
  (``bits << 16`` is the float32 of a bf16: exact). ``_decode``: each thread
  takes blocks of OUT_BLOCK output rows; a row of W (IN x 2 bytes, 1.5 KiB
  for C = 768) is read from memory once and serves the M rows of x from L1.
  The dot product is a float32 sum that LLVM may reassociate into vector
  lanes (``fastmath`` reassoc + contract): the order is fixed by the
  compiled code, so runs repeat bit for bit, but it is not the reference's
  order (within float32 accumulation error of it).
- prefill (more rows): W is widened WIDEN_ELEMENTS at a time into a float32
  block (``_widen``, one pass) and multiplied by the BLAS (``numpy.matmul``),
  which is compute-bound there and faster than a hand loop; the block is
  small beside the float32 W it stands for (8 MiB against 154 MiB for
  GPT-2's 50257 x 768 head).
"""
import numpy
from numba import njit, prange

from numgpt.kernels.bf16_units import bf16_value

DECODE_ROWS = 4                 # rows of x up to which the fused decode loop runs
OUT_BLOCK = 64                  # output rows per task of the decode loop
WIDEN_ELEMENTS = 1 << 21        # float32 elements of one widened block of W (8 MiB)


@njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)
def _decode(x, w_bits, bias, out):
    """out (M, OUT) = x (M, IN) @ widen(w_bits (OUT, IN))^T + bias (OUT,), widening in registers."""
    M, IN = x.shape
    OUT = w_bits.shape[0]
    for block in prange((OUT + OUT_BLOCK - 1) // OUT_BLOCK):
        for o in range(block * OUT_BLOCK, min(OUT, (block + 1) * OUT_BLOCK)):
            for m in range(M):
                total = numpy.float32(0.0)
                for i in range(IN):
                    total += x[m, i] * bf16_value(w_bits[o, i])
                out[m, o] = total + bias[o]


@njit(parallel=True, cache=True)
def _widen(w_bits, target):
    """target (R, IN) float32 = the bf16 bits w_bits (R, IN), widened (exact)."""
    R, IN = w_bits.shape
    for r in prange(R):
        for i in range(IN):
            target[r, i] = bf16_value(w_bits[r, i])


def linear_bf16(x, w_bits, bias=None):
    """x (..., IN) float32 @ W^T (+ bias) with W (OUT, IN) as bf16 bits: (..., OUT) float32."""
    lead, IN = x.shape[:-1], x.shape[-1]
    OUT = w_bits.shape[0]
    rows = numpy.ascontiguousarray(x.reshape(-1, IN), dtype=numpy.float32)
    out = numpy.empty((rows.shape[0], OUT), dtype=numpy.float32)
    if rows.shape[0] <= DECODE_ROWS:
        zeros = numpy.zeros(OUT, dtype=numpy.float32)
        _decode(rows, w_bits, zeros if bias is None else bias, out)
        return out.reshape(lead + (OUT,))
    block_rows = max(1, WIDEN_ELEMENTS // IN)
    block = numpy.empty((min(block_rows, OUT), IN), dtype=numpy.float32)
    for lo in range(0, OUT, block_rows):
        hi = min(OUT, lo + block_rows)
        _widen(w_bits[lo:hi], block[:hi - lo])
        numpy.matmul(rows, block[:hi - lo].T, out=out[:, lo:hi])
    if bias is not None:
        out += bias
    return out.reshape(lead + (OUT,))


JITTED = (_decode, _widen)
