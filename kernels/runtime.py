"""What importing ``numgpt.kernels`` runs, in order: the compile cache's
refresh (before any kernel loads: it drops cached code whose inlined helpers
changed), every kernel module, numba's threading layer (before the first
parallel loop), and the compile notice; ``warm_up`` runs every kernel once.
"""
import sys
import time

import numpy
from numba.core import event

from numgpt import backend
from numgpt.kernels import compile_cache

compile_cache.refresh()      # before the kernels load: drops cached code whose inlined vexp.py changed

from numgpt.kernels import adamw, attention, cross_entropy, embedding, fused, gelu, layer_norm, linear, matmul  # noqa: E402, F401, E501
from numgpt.ops.dropout import DropoutMask  # noqa: E402
from numgpt.ops.embedding import embedding_forward  # noqa: E402
from numgpt.ops.philox import AttentionDropout  # noqa: E402

backend.choose_threading_layer()     # before the first parallel loop: GNU OpenMP, waiting passively

JITTED = (attention.JITTED + layer_norm.JITTED + gelu.JITTED + cross_entropy.JITTED + adamw.JITTED
          + embedding.JITTED + matmul.JITTED + fused.JITTED)


class _AnnounceFirstCompile(event.Listener):
    """Prints the compile notice once, when numba starts compiling one of these
    kernels (numba fires "numba:compile" on a cache miss only)."""

    announced = False

    def on_start(self, ev):
        if not self.announced and ev.data["dispatcher"] in JITTED:
            type(self).announced = True
            print("compiling kernels, cached for next time", file=sys.stderr, flush=True)

    def on_end(self, ev):
        pass


event.register("numba:compile", _AnnounceFirstCompile())


def warm_up(dtype=numpy.float32):
    """Run every kernel once in ``dtype`` (compiling it, or loading it from the
    cache); returns the seconds taken."""
    dtype = numpy.dtype(dtype)
    rng = numpy.random.default_rng(0)
    start = time.perf_counter()
    B, T, NH, HS, V = 1, 3, 2, 2, 5
    C = NH * HS
    x = rng.standard_normal((B, T, C)).astype(dtype)
    for dropout in (None, AttentionDropout(0.5, 1)):
        out, cache = attention.attention_forward(x, x, x, NH, dropout)
        attention.attention_backward(out, cache)
    ones, zeros = numpy.ones(C, dtype=dtype), numpy.zeros(C, dtype=dtype)
    out, cache = layer_norm.layer_norm_forward(x, ones, zeros)
    layer_norm.layer_norm_backward(out, cache)
    out, cache = gelu.gelu_forward(x)
    gelu.gelu_backward(out, cache)
    out, cache = fused.linear_gelu_forward(x, x[0], ones[:T])
    fused.linear_gelu_backward(out, cache)
    for mask in (None, DropoutMask(x > 0, 2.0)):
        out, cache = fused.dropout_add_forward(x, x, mask)
        fused.dropout_add_backward(out, cache)
        outs, cache = fused.dropout_add_layer_norm_forward(x, x, mask, ones, zeros)
        for douts in ((outs[0], outs[1]), (None, outs[1])):
            fused.dropout_add_layer_norm_backward(douts, cache)
    targets = numpy.arange(T, dtype=numpy.int64)
    loss, cache = cross_entropy.cross_entropy_forward(rng.standard_normal((T, V)).astype(dtype), targets)
    cross_entropy.cross_entropy_backward(numpy.ones((), dtype=dtype), cache)
    adamw.adamw_update(x.copy(), x, x * 0, x * 0, 1, 1e-3, 0.9, 0.999, 1e-8, 0.01)
    out, cache = embedding_forward(targets, rng.standard_normal((V, C)).astype(dtype))
    embedding.embedding_backward(out, cache)
    # the smallest product the kernel takes
    square = rng.standard_normal((matmul.MIN_DIM, matmul.MIN_DIM)).astype(dtype)
    matmul.matmul(square, square.T)
    adamw.sum_of_squares(square)
    return time.perf_counter() - start

