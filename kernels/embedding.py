"""numba twin of numgpt.ops.embedding's backward: scatter-add the rows of dout
into dweight, one row after another in index order (as numpy.add.at), so a
token that appears twice sums in the same order every run.

Shapes: idx (...) int, dout (..., C) seen as (N, C), dweight (V, C).
"""
import numpy
from numba import njit

from numgpt.kernels.scratch import reusable


@njit(cache=True)
def _embedding_backward(idx, dout, dweight):
    N, C = dout.shape
    for i in range(N):
        row = idx[i]
        for c in range(C):
            dweight[row, c] += dout[i, c]                              # out[i] = weight[idx[i]]


def embedding_backward(dout, cache):
    idx, num_embeddings = cache
    channels = dout.shape[-1]
    dweight = reusable("embedding.dweight", (num_embeddings, channels), dout.dtype)   # (V, C)
    dweight.fill(0)
    _embedding_backward(numpy.ascontiguousarray(idx).reshape(-1), numpy.ascontiguousarray(dout).reshape(-1, channels),
                        dweight)
    return dweight


JITTED = (_embedding_backward,)
