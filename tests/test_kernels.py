"""Every numba kernel against its NumPy twin on odd shapes, forward and
backward: float32 within the named per-tensor tolerances below (the worst
error is printed), float64 to round-off; run-to-run bitwise determinism; and
the whole tiny GPTModel giving the same logits and gradients in both kernel
modes."""
import ast
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("numba")

from numba import njit  # noqa: E402

import numgpt  # noqa: E402
from numgpt import backend  # noqa: E402
from numgpt import registry  # noqa: E402
from numgpt.kernels import adamw as k_adamw  # noqa: E402
from numgpt.kernels import attention as k_attention  # noqa: E402
from numgpt.kernels import cross_entropy as k_cross_entropy  # noqa: E402
from numgpt.kernels import embedding as k_embedding  # noqa: E402
from numgpt.kernels import gelu as k_gelu  # noqa: E402
from numgpt.kernels import layer_norm as k_layer_norm  # noqa: E402
from numgpt.kernels import linear as k_linear  # noqa: E402
from numgpt.kernels import matmul as k_matmul  # noqa: E402
from numgpt.models.gpt import PRESETS, GPTModel  # noqa: E402
from numgpt.ops.attention import attention_backward, attention_forward  # noqa: E402
from numgpt.ops.cross_entropy import IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward  # noqa: E402
from numgpt.ops.embedding import embedding_backward, embedding_forward  # noqa: E402
from numgpt.ops.gelu import gelu_backward, gelu_forward  # noqa: E402
from numgpt.ops.layer_norm import layer_norm_backward, layer_norm_forward  # noqa: E402
from numgpt.ops.linear import linear_backward, linear_forward  # noqa: E402
from numgpt.ops.philox import AttentionDropout  # noqa: E402
from numgpt.ops.swiglu import swiglu_linear_backward, swiglu_linear_forward  # noqa: E402
from numgpt.optim import adamw_update, sum_of_squares  # noqa: E402

B, T, C, NH, V = 3, 7, 12, 3, 37

# float32 tolerances, relative to the largest magnitude of the reference tensor
FLOAT32_RTOL = {
    "attention.out": 1e-6, "attention.dqkv": 2e-6, "linear.out": 2e-6, "linear.grads": 2e-6,
    "layer_norm.out": 1e-6, "layer_norm.dx": 2e-6, "layer_norm.dweight": 1e-6, "layer_norm.dbias": 1e-6,
    "gelu.out": 1e-6, "gelu.dx": 5e-6,
    "cross_entropy.loss": 1e-6, "cross_entropy.dlogits": 1e-6,
    "adamw.param": 1e-7, "adamw.exp_avg": 0.0, "adamw.exp_avg_sq": 0.0,
    "embedding.dweight": 0.0,
    "matmul.out": 2e-6, "sum_of_squares": 1e-12,
    "model.logits": 1e-5, "model.grad": 1e-4,
}
# float64: round-off only
FLOAT64_RTOL = 1e-12


def assert_close(name, got, want, rtol):
    """|got - want| <= rtol * max|want| everywhere (NaN and inf where want has them); prints the worst error."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    finite = np.isfinite(want)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{name}: NaN at different places"
    assert np.array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)]), f"{name}: inf differs"
    scale = float(np.max(np.abs(want[finite]), initial=0.0)) or 1.0
    worst = float(np.max(np.abs(got[finite].astype(np.float64) - want[finite]), initial=0.0)) / scale
    print(f"{name} ({got.dtype}): worst error {worst:.2e} of max |ref| {scale:.3g} (tolerance {rtol:.0e})")
    assert worst <= rtol, f"{name}: worst relative error {worst:.3e} > {rtol:.0e}"


def tol(name, dtype):
    return FLOAT32_RTOL[name] if dtype == np.float32 else FLOAT64_RTOL


def randn(shape, seed, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


DTYPES = [np.float32, np.float64]


def test_every_twin_is_registered_against_its_reference_function():
    twins = registry.numba_twins()
    references = {f.__name__: f for f in (attention_forward, attention_backward, layer_norm_forward,
                                          layer_norm_backward, gelu_forward, gelu_backward, cross_entropy_forward,
                                          cross_entropy_backward, adamw_update, sum_of_squares, embedding_backward,
                                          linear_forward, linear_backward, swiglu_linear_forward,
                                          swiglu_linear_backward)}
    assert set(twins) == set(references.values())
    for reference, twin in twins.items():
        assert twin.__name__ == reference.__name__ and twin is not reference
        assert twin.__module__ == "numgpt.kernels." + reference.__module__.split(".")[-1].replace("optim", "adamw")
    previous = backend.get_kernel_mode()
    try:
        backend.set_kernel_mode("numba")
        assert all(registry.implementation(ref) is twin for ref, twin in twins.items())
        backend.set_kernel_mode("numpy")
        assert all(registry.implementation(ref) is ref for ref in twins)
    finally:
        backend.set_kernel_mode(previous)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_numpy(dtype, bias):
    x, w = randn((B, T, 40), 0, dtype), randn((24, 40), 1, dtype)
    b = randn((24,), 2, dtype) if bias else None
    out, cache = k_linear.linear_forward(x, w, b)
    want_out, want_cache = linear_forward(x, w, b)
    assert type(cache) is type(want_cache)
    assert_close("linear.out", out, want_out, tol("linear.out", dtype))
    dout = randn(out.shape, 3, dtype)
    for name, got, want in zip(("dx", "dweight", "dbias"), k_linear.linear_backward(dout, cache),
                               linear_backward(dout, want_cache)):
        if want is None:
            assert got is None
        else:
            assert_close(f"linear.{name}", got, want, tol("linear.grads", dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_dropout", [False, True])
def test_attention_matches_numpy(dtype, with_dropout):
    """The flash twin keeps its own cache (registry.py); odd shapes, GQA and dropout: tests/test_flash_attention.py."""
    q, k, v = (randn((B, T, C), seed, dtype, scale=2.0) for seed in (0, 4, 5))
    dropout = AttentionDropout(0.3, 2 ** 63 + 12345) if with_dropout else None
    out, cache = k_attention.attention_forward(q, k, v, NH, dropout)
    want_out, want_cache = attention_forward(q, k, v, NH, dropout)
    assert type(cache) is k_attention.FlashAttentionCache
    assert_close("attention.out", out, want_out, tol("attention.out", dtype))
    dout = randn((B, T, C), 1, dtype)
    for name, got, want in zip("qkv", k_attention.attention_backward(dout, cache),
                               attention_backward(dout, want_cache)):
        assert_close(f"attention.d{name}", got, want, tol("attention.dqkv", dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_matches_numpy(dtype):
    x = randn((B, T, C), 0, dtype, scale=3.0) + dtype(5.0)
    weight, bias = randn((C,), 1, dtype), randn((C,), 2, dtype)
    out, cache = k_layer_norm.layer_norm_forward(x, weight, bias)
    want_out, want_cache = layer_norm_forward(x, weight, bias)
    assert type(cache) is type(want_cache) and cache.mean.shape == want_cache.mean.shape
    assert_close("layer_norm.out", out, want_out, tol("layer_norm.out", dtype))
    dout = randn((B, T, C), 3, dtype)
    grads = k_layer_norm.layer_norm_backward(dout, cache)
    want = layer_norm_backward(dout, want_cache)
    for name, got, ref in zip(("dx", "dweight", "dbias"), grads, want):
        assert_close(f"layer_norm.{name}", got, ref, tol(f"layer_norm.{name}", dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_matches_numpy(dtype):
    x = randn((B, T, 4 * C), 0, dtype, scale=4.0)
    x.flat[:6] = [0.0, 30.0, -30.0, 1e-4, np.inf, np.nan]
    out, cache = k_gelu.gelu_forward(x)
    with np.errstate(invalid="ignore", over="ignore"):
        want_out, want_cache = gelu_forward(x)
    assert_close("gelu.out", out, want_out, tol("gelu.out", dtype))
    dout = randn(x.shape, 1, dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        want_dx = gelu_backward(dout, want_cache)
    assert_close("gelu.dx", k_gelu.gelu_backward(dout, cache), want_dx, tol("gelu.dx", dtype))


@pytest.mark.parametrize("dtype, n_rows, vocab", [(np.float32, 21, V), (np.float64, 21, V), (np.float32, 3, 50257)])
def test_cross_entropy_matches_numpy(dtype, n_rows, vocab):
    logits = randn((n_rows, vocab), 0, dtype, scale=3.0)
    targets = np.random.default_rng(1).integers(0, vocab, n_rows)
    targets[1] = IGNORE_INDEX
    loss, cache = k_cross_entropy.cross_entropy_forward(logits, targets)
    want_loss, want_cache = cross_entropy_forward(logits, targets)
    assert type(cache) is type(want_cache)
    assert_close("cross_entropy.loss", loss, want_loss, tol("cross_entropy.loss", dtype))
    assert_close("cross_entropy.probs", cache.probs, want_cache.probs, tol("cross_entropy.dlogits", dtype))
    dout = np.asarray(0.7, dtype=dtype)
    want_dlogits = cross_entropy_backward(dout, want_cache)
    assert_close("cross_entropy.dlogits", k_cross_entropy.cross_entropy_backward(dout, cache), want_dlogits,
                 tol("cross_entropy.dlogits", dtype))


def test_cross_entropy_with_every_target_ignored_is_nan_with_zero_gradient():
    logits = randn((4, V), 0, np.float32)
    targets = np.full(4, IGNORE_INDEX)
    loss, cache = k_cross_entropy.cross_entropy_forward(logits, targets)
    assert np.isnan(loss)
    assert not k_cross_entropy.cross_entropy_backward(np.asarray(1.0, np.float32), cache).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_matches_numpy(dtype):
    param = randn((7, 13), 0, dtype)
    mine = [param.copy(), np.zeros_like(param), np.zeros_like(param)]
    ref = [param.copy(), np.zeros_like(param), np.zeros_like(param)]
    for step in range(1, 4):
        grad = randn(param.shape, step, dtype)
        k_adamw.adamw_update(mine[0], grad, mine[1], mine[2], step, 4e-4, 0.9, 0.999, 1e-8, 0.1)
        adamw_update(ref[0], grad, ref[1], ref[2], step, 4e-4, 0.9, 0.999, 1e-8, 0.1)
    for name, got, want in zip(("param", "exp_avg", "exp_avg_sq"), mine, ref):
        assert_close(f"adamw.{name}", got, want, tol(f"adamw.{name}", dtype))


def test_adamw_updates_a_non_contiguous_parameter_in_place():
    base = randn((6, 10), 0, np.float32)
    param = base[:, ::2]                                            # a strided view
    want = param.copy()
    grad = randn(param.shape, 1, np.float32)
    adamw_update(want, grad, np.zeros_like(want), np.zeros_like(want), 1, 1e-2, 0.9, 0.999, 1e-8, 0.1)
    k_adamw.adamw_update(param, grad, np.zeros_like(want), np.zeros_like(want), 1, 1e-2, 0.9, 0.999, 1e-8, 0.1)
    assert_close("adamw.param", base[:, ::2], want, FLOAT32_RTOL["adamw.param"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_matches_numpy(dtype):
    idx = np.random.default_rng(0).integers(0, V, (B, T))
    idx[0, :3] = 5                                                  # repeats add up
    weight = randn((V, C), 1, dtype)
    _, cache = embedding_forward(idx, weight)
    dout = randn((B, T, C), 2, dtype)
    assert_close("embedding.dweight", k_embedding.embedding_backward(dout, cache),
                 embedding_backward(dout, cache), tol("embedding.dweight", dtype))


needs_avx512 = pytest.mark.skipif(not k_matmul.HAS_AVX512, reason="the matmul kernel runs on AVX-512 CPUs only "
                                                                     "(elsewhere every product is numpy.matmul)")

# (M, K, N): edge tiles in every direction (MR = 8, NR = 48), one more K block than KC = 256, the
# smallest product the kernel takes, rows longer than columns (the split over rows) and the reverse
MATMUL_SHAPES = [(37, 50, 61), (16, 16, 16), (129, 300, 97), (300, 257, 40), (21, 64, 192), (8 * 9, 16, 48 * 3 + 5)]


def matmul_operands(shape, a_transposed, b_transposed, stack=(), seed=0):
    """float32 a (..., M, K) and b (..., K, N), each a transposed view when asked."""
    M, K, N = shape
    a = randn(stack + ((K, M) if a_transposed else (M, K)), seed, np.float32)
    b = randn(stack + ((N, K) if b_transposed else (K, N)), seed + 1, np.float32)
    return (a.swapaxes(-1, -2) if a_transposed else a), (b.swapaxes(-1, -2) if b_transposed else b)


@needs_avx512
@pytest.mark.parametrize("shape", MATMUL_SHAPES)
@pytest.mark.parametrize("stack", [(), (5,), (2, 3)])
def test_matmul_kernel_matches_numpy(shape, stack):
    for a_transposed in (False, True):
        for b_transposed in (False, True):
            a, b = matmul_operands(shape, a_transposed, b_transposed, stack)
            assert k_matmul.kernel_operands(a, b) is not None, "the product went to numpy.matmul, not the kernel"
            want = np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.float32)
            got = k_matmul.kernel_matmul(a, b)
            assert_close(f"matmul.out {shape} stack {stack} a.T {a_transposed} b.T {b_transposed}", got, want,
                         tol("matmul.out", np.float32))
            out = np.full(want.shape, np.nan, dtype=np.float32)             # every element must be written
            assert k_matmul.kernel_matmul(a, b, out=out) is out
            assert np.array_equal(out, got)


@needs_avx512
def test_matmul_kernel_propagates_inf_and_nan():
    a, b = matmul_operands((37, 50, 61), False, True)
    a[3, 7], a[20, 0], b[5, 60] = np.inf, np.nan, -np.inf
    want = np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.float32)
    assert np.isnan(want).any() and np.isinf(want).any()
    assert_close("matmul.out with inf and NaN", k_matmul.kernel_matmul(a, b), want, tol("matmul.out", np.float32))


@needs_avx512
def test_matmul_kernel_gives_the_same_bits_on_any_number_of_threads():
    import numba
    previous = numba.get_num_threads()
    try:
        for shape in [(129, 300, 97), (300, 257, 40)]:
            a, b = matmul_operands(shape, False, True)
            results = []
            for threads in (1, previous, 1):
                numba.set_num_threads(threads)
                results.append(k_matmul.kernel_matmul(a, b))
            assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])
    finally:
        numba.set_num_threads(previous)


def test_matmul_kernel_hands_other_products_to_numpy():
    a, b = matmul_operands((37, 50, 61), False, False)
    cases = {
        "float64": (a.astype(np.float64), b.astype(np.float64)),
        "a dimension under MIN_DIM": (a[:, :k_matmul.MIN_DIM - 1], b[:k_matmul.MIN_DIM - 1]),
        "strided rows": (a[::2], b),
        "a broadcast stack": (np.stack([a, a]), b),
        "mixed dtypes": (a, b.astype(np.float64)),
    }
    for name, (x, y) in cases.items():
        assert k_matmul.kernel_operands(x, y) is None, name
        got = k_matmul.matmul(x, y)
        assert got.dtype == np.matmul(x, y).dtype and np.array_equal(got, np.matmul(x, y)), name
    square = randn((40, 40), 5, np.float32)
    want = np.matmul(square, square)
    assert k_matmul.kernel_operands(square, square, out=square) is None, "an output overlapping an input"
    assert np.array_equal(k_matmul.matmul(square, square, out=square), want)
    with pytest.raises(ValueError):
        k_matmul.matmul(a, a)                                           # (37, 50) @ (37, 50): numpy's error


# ---------------------------------------------------------------- the matmul micro-kernel and its scalar twin
FLOAT32_EPS = 2.0 ** -24                 # unit round-off of float32
X_TIE, Y_TIE = 1 + 2.0 ** -23, 2.0 ** -24 - 2.0 ** -47   # X_TIE Y_TIE + X_TIE: float64 rounds it onto a float32 tie

TileArgs = namedtuple("TileArgs", "a a_offset a_row_stride a_col_stride packed_b b_offset kc c c_offset ldc")


def round_to_float32(q):
    """The float32 nearest the rational q, ties to even, in exact integer arithmetic."""
    if q == 0:
        return np.float32(0.0)
    sign, q = (-1 if q < 0 else 1), abs(q)
    e = math.frexp(float(q))[1] - 1                                  # 2^e <= q < 2^(e+1), up to float rounding
    e += 1 if q >= Fraction(2) ** (e + 1) else -1 if q < Fraction(2) ** e else 0
    ulp = Fraction(2) ** (max(e, -126) - 23)                         # float32's spacing at q (subnormals: 2^-149)
    return np.float32(sign * float(round(q / ulp) * ulp))            # round(Fraction): half to even


def test_fma32_rounds_once_as_a_fused_multiply_add_does():
    rng = np.random.default_rng(0)
    x, y, z = rng.standard_normal((3, 3000)).astype(np.float32)
    z[::3] = -(x[::3] * y[::3])                                      # cancellation: the rounding error shows
    z[1::3] *= np.float32(2.0) ** rng.integers(-30, 30, 1000).astype(np.float32)
    cases = list(zip(x, y, z)) + [tuple(np.float32([X_TIE, Y_TIE, X_TIE]))]
    for a, b, c in cases:
        want = round_to_float32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))
        got = np.float32(k_matmul._fma32(a, b, c))                   # numba returns the float32 as a Python float
        assert got.view(np.uint32) == want.view(np.uint32), (a, b, c, got, want)
    x, y = np.float32(X_TIE), np.float32(Y_TIE)
    assert k_matmul._fma32(x, y, x) == np.float32(X_TIE)
    assert np.float32(float(x) * float(y) + float(x)) == np.float32(1 + 2.0 ** -22), "rounded twice"
    assert np.isnan(k_matmul._fma32(np.float32(np.inf), np.float32(0.0), np.float32(1.0)))
    assert k_matmul._fma32(np.float32(np.inf), np.float32(2.0), np.float32(1.0)) == np.inf


def micro_kernel_inputs(kc, a_transposed, seed):
    """One tile's operands, in the layouts _product_block hands the micro-kernel: A read in place
    (row-major, row stride K) or from the packed columns of a transposed A (row stride 1, column
    stride mc); packed_b one NR-wide panel (p NR + j) after another; C inside a wider array.
    The tile's row 0 of A and column 0 of B (kc >= 2) make its first element sum fma(x, 1, 0) = x,
    then fma(x, y, x), which rounds twice unless fused (X_TIE, Y_TIE), then zeros.
    Returns the arguments and the tile's A (MR, kc) and B (kc, NR)."""
    MR, NR = k_matmul.MR, k_matmul.NR
    rng = np.random.default_rng(seed)
    mc, K, ir, pc = 2 * MR, kc + 5, MR, 3                           # the tile: rows ir:ir+MR, columns pc:pc+kc
    A = rng.standard_normal((mc, K)).astype(np.float32)
    B = rng.standard_normal((kc, NR)).astype(np.float32)
    if kc >= 2:
        A[ir, pc:pc + kc] = 0.0
        A[ir, pc:pc + 2] = X_TIE
        B[0:2, 0] = 1.0, Y_TIE
    if a_transposed:
        a, a_offset, row_stride, col_stride = np.ascontiguousarray(A[:, pc:pc + kc].T).ravel(), ir, 1, mc
    else:
        a, a_offset, row_stride, col_stride = A.ravel(), ir * K + pc, K, 1
    packed_b = np.concatenate([rng.standard_normal(NR).astype(np.float32), B.ravel()])   # the panel at offset NR
    ldc = NR + 7
    c = rng.standard_normal((MR + 2) * ldc).astype(np.float32)
    return (TileArgs(a, a_offset, row_stride, col_stride, packed_b, NR, kc, c, ldc + 2, ldc),
            A[ir:ir + MR, pc:pc + kc], B)


def tile_of(args):
    """The indices of the tile in args.c, (MR, NR)."""
    return args.c_offset + np.arange(k_matmul.MR)[:, None] * args.ldc + np.arange(k_matmul.NR)


@pytest.mark.parametrize("a_transposed", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_tile_product_scalar_twin_is_a_fused_float32_sum(a_transposed, accumulate):
    """On every CPU: within the float32 error bound of the exact (float64) product, exact on the
    planted sum that only a single rounding gets right, and not the unfused sum."""
    for kc in (0, 1, 37, k_matmul.KC):
        args, A, B = micro_kernel_inputs(kc, a_transposed, seed=kc)
        before, rows = args.c.copy(), tile_of(args)
        k_matmul._tile_product_scalar(*args, accumulate)
        outside = np.ones(args.c.size, dtype=bool)
        outside[rows] = False
        assert np.array_equal(args.c[outside], before[outside]), "the twin wrote outside its tile"
        old = before[rows].astype(np.float64) if accumulate else 0.0
        exact = A.astype(np.float64) @ B.astype(np.float64) + old
        # a float32 sum of kc products, then one addition into c: |error| <= (kc + 1) u (|A| |B| + |c|)
        bound = (kc + 1) * FLOAT32_EPS * (np.abs(A).astype(np.float64) @ np.abs(B) + np.abs(old))
        worst = float(np.max(np.abs(args.c[rows] - exact) / np.maximum(bound, 1e-300)))
        print(f"scalar twin, kc {kc}, a.T {a_transposed}, accumulate {accumulate}: worst error {worst:.2f} "
              f"of its bound")
        assert worst <= 1.0
        if kc >= 2 and not accumulate:
            assert args.c[rows][0, 0] == np.float32(X_TIE), "the planted sum was rounded twice"
        if kc == k_matmul.KC and not accumulate:
            unfused = np.zeros((k_matmul.MR, k_matmul.NR), dtype=np.float32)
            for p in range(kc):
                unfused += A[:, p:p + 1] * B[p]                      # float32 multiply, then float32 add
            assert not np.array_equal(args.c[rows], unfused), "the data cannot tell fused from unfused"


@njit
def run_tile_product(a, a_offset, a_row_stride, a_col_stride, packed_b, b_offset, kc, c, c_offset, ldc, accumulate):
    k_matmul._tile_product(a, a_offset, a_row_stride, a_col_stride, packed_b, b_offset, kc, c, c_offset, ldc,
                           accumulate)


@njit
def run_pack_b(b, b_transposed, K, N, pc, kc, jc, nc, packed):
    k_matmul._pack_b(b, b_transposed, K, N, pc, kc, jc, nc, packed)


@needs_avx512
@pytest.mark.parametrize("b_transposed", [False, True])
def test_tile_product_is_its_scalar_twin_bit_for_bit(b_transposed):
    """The AVX-512 micro-kernel against its twin on the same packed inputs: packed_b written by
    _pack_b itself (its layout checked first), A in both of _product_block's layouts."""
    NR = k_matmul.NR
    K, pc, jc = 300, 20, 3
    nc = 2 * NR + 5                                                  # two full panels and a 5-wide one
    for kc in (0, 1, 37, k_matmul.KC):
        _, _, B_tile = micro_kernel_inputs(kc, False, seed=kc + 100)
        B = np.random.default_rng(kc).standard_normal((K, jc + nc)).astype(np.float32)
        B[pc:pc + kc, jc + NR:jc + 2 * NR] = B_tile                  # the second panel carries the planted column
        packed_b = np.full(3 * kc * NR, np.nan, dtype=np.float32)
        run_pack_b(np.ascontiguousarray(B.T).ravel() if b_transposed else B.ravel(), b_transposed,
                   K, jc + nc, pc, kc, jc, nc, packed_b)
        for panel in range(3):                                       # packed_b[panel kc NR + p NR + j], zero-padded
            want = np.zeros((kc, NR), dtype=np.float32)
            block = B[pc:pc + kc, jc + panel * NR:jc + (panel + 1) * NR]
            want[:, :block.shape[1]] = block
            assert np.array_equal(packed_b[panel * kc * NR:(panel + 1) * kc * NR].reshape(kc, NR), want)
        for a_transposed in (False, True):
            args, _, _ = micro_kernel_inputs(kc, a_transposed, seed=kc + 100)
            args = args._replace(packed_b=packed_b, b_offset=kc * NR)
            for accumulate in (False, True):
                twin, simd = args.c.copy(), args.c.copy()
                k_matmul._tile_product_scalar(*args._replace(c=twin), accumulate)
                run_tile_product(*args._replace(c=simd), accumulate)
                assert np.array_equal(simd.view(np.uint32), twin.view(np.uint32)), \
                    f"kc {kc}, a.T {a_transposed}, accumulate {accumulate}: the micro-kernel and its twin differ"
                if kc >= 2 and not accumulate:
                    assert simd[tile_of(args)][0, 0] == np.float32(X_TIE)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_squares_matches_float64(dtype):
    for shape in [(7,), (3, 70_001), (k_adamw.CHUNK * 2 + 17,)]:
        x = randn(shape, 0, dtype, scale=3.0)
        want = float(np.sum(x.astype(np.float64) ** 2))
        got = k_adamw.sum_of_squares(x)
        assert isinstance(got, float)
        worst = abs(got - want) / want
        print(f"sum_of_squares {shape} ({dtype.__name__}): relative error {worst:.2e}")
        assert worst <= tol("sum_of_squares", np.float32)       # float64 sums whatever the input dtype
    x = randn((1000,), 1, np.float32)
    x[10] = np.inf
    assert k_adamw.sum_of_squares(x) == np.inf
    x[20] = np.nan
    assert np.isnan(k_adamw.sum_of_squares(x))
    strided = randn((50, 40), 2, np.float32)[:, ::3]
    assert abs(k_adamw.sum_of_squares(strided) - float(np.sum(strided.astype(np.float64) ** 2))) <= 1e-5 * \
        float(np.sum(strided.astype(np.float64) ** 2))


def test_kernels_are_deterministic_run_to_run():
    q, k, v = (randn((B, T, C), seed, np.float32) for seed in (0, 5, 6))
    dropout = AttentionDropout(0.1, 99)
    dout = randn((B, T, C), 1, np.float32)
    x = randn((40, C), 2, np.float32)                               # more rows than one LayerNorm chunk
    w, b = randn((C,), 3, np.float32), randn((C,), 4, np.float32)
    runs = []
    for _ in range(2):
        out, cache = k_attention.attention_forward(q, k, v, NH, dropout)
        dq, dk, dv = k_attention.attention_backward(dout, cache)
        ln_out, ln_cache = k_layer_norm.layer_norm_forward(x, w, b)
        runs.append((out, dq, dk, dv, ln_out) + k_layer_norm.layer_norm_backward(x, ln_cache))
    for first, second in zip(*runs):
        assert np.array_equal(first, second)


def run_tiny_model(mode, dtype=np.float32):
    """Logits, loss and every parameter gradient of one training step (dropout on) in ``mode``."""
    previous = backend.get_kernel_mode()
    backend.set_kernel_mode(mode)
    try:
        numgpt.manual_seed(123)
        cfg = dict(PRESETS["tiny"], drop_rate=0.1, qkv_bias=True)
        model = GPTModel(cfg).to(dtype=dtype)
        model.train()
        rng = np.random.default_rng(0)
        idx = rng.integers(0, cfg["vocab_size"], (3, 7))
        targets = rng.integers(0, cfg["vocab_size"], (3, 7))
        logits = model(idx)
        loss = numgpt.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        return logits.data.copy(), loss.data, {name: p.grad for name, p in model.named_parameters()}
    finally:
        backend.set_kernel_mode(previous)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiny_model_is_the_same_under_numpy_and_numba(dtype):
    logits, loss, grads = run_tiny_model("numba", dtype)
    want_logits, want_loss, want_grads = run_tiny_model("numpy", dtype)
    assert_close("model.logits", logits, want_logits, tol("model.logits", dtype))
    assert_close("model.loss", loss, want_loss, tol("model.logits", dtype))
    assert set(grads) == set(want_grads)
    largest = max(float(np.max(np.abs(g))) for g in want_grads.values())
    for name in want_grads:
        if name.endswith("att.W_key.bias"):
            # exactly zero analytically (softmax ignores a shift shared by a row of scores): round-off only
            worst = float(np.max(np.abs(grads[name]))) / largest
            print(f"model.grad {name}: |grad| up to {worst:.2e} of the largest gradient")
            assert worst <= tol("model.grad", dtype)
            continue
        assert_close(f"model.grad {name}", grads[name], want_grads[name], tol("model.grad", dtype))


def test_warm_up_compiles_or_loads_every_kernel():
    from numgpt import kernels
    seconds = kernels.warm_up(np.float32)
    print(f"kernels ready in {seconds:.2f} s")
    for dispatcher in kernels.JITTED:
        if dispatcher is kernels.matmul._gemm and not kernels.matmul.HAS_AVX512:
            continue        # no AVX-512 on this CPU: products go to the BLAS and the GEMM kernel never runs
        assert dispatcher.signatures, f"{dispatcher.py_func.__name__} never compiled"


# ---------------------------------------------------------------- vexp
VEXP_RTOL = 2e-7        # float32 exp by polynomial, relative to float64 exp (numpy's float32 exp: ~6e-8)


def test_vexp_matches_exp_over_the_whole_float32_range():
    from numba import njit
    from numgpt.kernels.vexp import EXP_MAX, EXP_MIN, vexp

    @njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = vexp(x[i])

    x = np.concatenate([np.linspace(-110, 90, 400_001, dtype=np.float32),
                        np.float32([np.nan, -np.inf, np.inf, EXP_MIN, EXP_MAX, 0.0, -0.0])])
    out = np.empty_like(x)
    apply(x, out)
    exact = np.exp(x.astype(np.float64))
    normal = (exact >= np.finfo(np.float32).tiny) & (exact <= np.finfo(np.float32).max)
    worst = np.max(np.abs(out[normal] - exact[normal]) / exact[normal])
    print(f"vexp worst relative error {worst:.2e} over {normal.sum()} normal results")
    assert out.dtype == np.float32 and worst <= VEXP_RTOL
    assert np.isnan(out[-7]) and out[-6] == 0.0 and out[-5] == np.inf
    assert np.all(out[exact > np.finfo(np.float32).max] == np.inf)
    assert np.all((out[exact < np.finfo(np.float32).tiny] >= 0) & (out[exact < np.finfo(np.float32).tiny] < 1.2e-38))
    np.testing.assert_array_equal(out[-2:], 1.0)


# ---------------------------------------------------------------- numba's compile cache and cross-file code
def numgpt_imports(path):
    """{name bound in the module at path: the numgpt module it comes from}, from its import statements."""
    names = {}
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = ("numgpt.kernels." * (node.level > 0)) + (node.module or "")
            for alias in node.names:
                names[alias.asname or alias.name] = module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name
    return {name: module for name, module in names.items() if module.startswith("numgpt")}


def names_read(code):
    """Every global name a function's code (and the code nested in it) reads."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if hasattr(constant, "co_names"):
            names |= names_read(constant)
    return names


def jit_reads(name):
    """The numgpt modules whose names the jitted functions of kernels/<name>.py read."""
    from numba.core.dispatcher import Dispatcher
    module = importlib.import_module(f"numgpt.kernels.{name}")
    imports = numgpt_imports(module.__file__)
    read = set()
    for value in vars(module).values():
        if isinstance(value, Dispatcher) and value.py_func.__module__ == module.__name__:
            read |= {imports[n] for n in names_read(value.py_func.__code__) if n in imports}
    return read


def test_compile_cache_dependencies_are_the_names_jitted_code_takes_from_other_files():
    """compile_cache.DEPENDENCIES against the sources: a kernel module depends on the modules of
    this folder whose names its jitted functions read (and on what their jitted functions read,
    in turn); jitted code reads nothing from numgpt outside this folder (a new such name needs a line here)."""
    from numgpt.kernels import compile_cache
    folder = os.path.dirname(compile_cache.__file__)
    found = {}
    for file in sorted(os.listdir(folder)):
        name = file[:-3]
        if not file.endswith(".py") or name in ("__init__", "compile_cache"):
            continue
        read, todo = set(), jit_reads(name)
        while todo:                                                  # and what a dependency's jitted code reads
            module = todo.pop()
            read.add(module)
            if module.startswith("numgpt.kernels."):
                todo |= jit_reads(module.rsplit(".", 1)[1]) - read
        outside = sorted(m for m in read if not m.startswith("numgpt.kernels."))
        assert not outside, f"{name}: its jitted code takes {outside}, which compile_cache does not follow"
        depends = {m.rsplit(".", 1)[1] for m in read}
        if depends:
            found[name] = tuple(sorted(depends))
    assert found == {module: tuple(sorted(d)) for module, d in compile_cache.DEPENDENCIES.items()}


CACHE_PROBE = """
import json, sys, types
folder, refresh = sys.argv[1], sys.argv[2] == "refresh"
package = types.ModuleType("numgpt.kernels")      # numgpt.kernels is the copy in folder (its __init__ not run)
package.__path__ = [folder]
sys.modules["numgpt.kernels"] = package
import numpy
from numba.core import event

compiled = []


class Compiles(event.Listener):                   # numba fires "numba:compile" on a cache miss only
    def on_start(self, ev):
        function = ev.data["dispatcher"].py_func
        if function.__module__.startswith("numgpt.kernels."):    # not numba's own helpers
            compiled.append(function.__name__)

    def on_end(self, ev):
        pass


event.register("numba:compile", Compiles())
from numgpt.kernels import compile_cache, embedding, gelu
from numgpt.ops.embedding import embedding_forward

removed = compile_cache.refresh() if refresh else None
out, _ = gelu.gelu_forward(numpy.linspace(-3, 3, 7, dtype=numpy.float32))
_, cache = embedding_forward(numpy.arange(3), numpy.ones((4, 2), dtype=numpy.float32))
embedding.embedding_backward(numpy.ones((3, 2), dtype=numpy.float32), cache)
print(json.dumps({"removed": removed, "compiled": sorted(compiled), "gelu": out.tolist(),
                  "cache": compile_cache.cache_directory()}))
"""


def test_compile_cache_recompiles_the_kernels_that_inline_vexp_after_it_changes(tmp_path):
    """In a copy of the kernels folder with its own NUMBA_CACHE_DIR, one subprocess per run:
    gelu (inlines vexp) and embedding (does not) compile once, then load from the cache; after an
    edit to vexp.py numba alone still loads gelu's old code, and with compile_cache.refresh gelu
    (only gelu) compiles again, with the new vexp."""
    from numgpt.kernels import compile_cache
    folder = tmp_path / "kernels"
    shutil.copytree(os.path.dirname(compile_cache.__file__), folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))

    def run(refresh=True):
        result = subprocess.run([sys.executable, "-c", CACHE_PROBE, str(folder), "refresh" if refresh else "no"],
                                env=env, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.splitlines()[-1])

    first = run()
    assert first["cache"].startswith(str(tmp_path / "numba-cache"))
    assert first["removed"] == sorted(compile_cache.DEPENDENCIES)   # no stamp yet
    assert first["compiled"] == ["_embedding_backward", "_gelu_forward", "vexp_float32"]   # vexp: with gelu
    again = run()
    assert again["removed"] == [] and again["compiled"] == [] and again["gelu"] == first["gelu"]

    with open(folder / "vexp.py", "a", encoding="utf-8") as f:
        f.write("\nEXP_MAX = 1.0   # a constant vexp's compiled code holds: exp above 1 becomes inf\n")
    stale = run(refresh=False)
    assert stale["compiled"] == [] and stale["gelu"] == first["gelu"], "numba noticed the edit by itself"
    fresh = run()
    assert fresh["removed"] == sorted(module for module, sources in compile_cache.DEPENDENCIES.items()
                                      if "vexp" in sources)
    assert fresh["compiled"] == ["_gelu_forward", "vexp_float32"]
    assert fresh["gelu"] != first["gelu"]
    assert run()["compiled"] == []


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_linear_matches_numpy(dtype, bias):
    from numgpt.kernels import swiglu as k_swiglu
    gate, up, w = randn((B, T, 40), 0, dtype), randn((B, T, 40), 1, dtype), randn((24, 40), 2, dtype)
    b = randn((24,), 3, dtype) if bias else None
    out, cache = k_swiglu.swiglu_linear_forward(gate, up, w, b)
    ref_out, ref_cache = swiglu_linear_forward(gate, up, w, b)
    assert_close("swiglu_linear.out", out, ref_out, tol("linear.out", dtype))
    dout = randn(out.shape, 4, dtype)
    for name, got, want in zip(("dgate", "dup", "dweight", "dbias"), k_swiglu.swiglu_linear_backward(dout, cache),
                               swiglu_linear_backward(dout, ref_cache)):
        if want is None:
            assert got is None
        else:
            assert got.dtype == dtype
            assert_close(f"swiglu_linear.{name}", got, want, tol("linear.grads", dtype))


# ---------------------------------------------------------------- numba's threading layer
THREADING_PROBE = """
import ctypes, ctypes.util, json, os, sys
if sys.argv[1] == "preload":                      # another library brought OpenMP in first
    ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1")
import numba, numpy
from numgpt import kernels
from numgpt.kernels import layer_norm
x = numpy.ones((4, 3), dtype=numpy.float32)
layer_norm.layer_norm_forward(x, x[0], x[0])      # a parallel loop: the layer is fixed now
print(json.dumps({"layer": numba.threading_layer(), "environment": os.environ.get("OMP_WAIT_POLICY")}))
"""


@pytest.mark.parametrize("case, env, layer, policy", [
    ("plain", {}, "omp", "PASSIVE"),
    ("plain", {"OMP_WAIT_POLICY": "active"}, "omp", "ACTIVE"),
    ("plain", {"NUMBA_THREADING_LAYER": "workqueue"}, "workqueue", None),
    ("preload", {}, "workqueue", None),
])
def test_the_threading_layer_is_openmp_waiting_passively_unless_told_or_preloaded(case, env, layer, policy):
    """backend.choose_threading_layer in a fresh process: OpenMP with passive waiting by default
    (spinning threads took the cores from OpenBLAS between loops), without leaving
    OMP_WAIT_POLICY to subprocesses; the user's settings win; an OpenMP already loaded by another
    library keeps its own wait policy, so numba's workqueue runs. libgomp prints the policy it
    runs with (OMP_DISPLAY_ENV), when numgpt loads it."""
    environment = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", THREADING_PROBE, case],
                            env=dict(environment, OMP_DISPLAY_ENV="true", **env),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"layer": layer, "environment": env.get("OMP_WAIT_POLICY")}
    if policy:                                   # one OpenMP runtime, numgpt's, with that policy
        print(result.stderr)
        assert [line.strip() for line in result.stderr.splitlines() if "OMP_WAIT_POLICY =" in line] == \
            [f"OMP_WAIT_POLICY = '{policy}'"]
