"""Every numba kernel against its NumPy twin on odd shapes, forward and
backward: float32 within the named per-tensor tolerances below (the worst
error is printed), float64 to round-off; run-to-run bitwise determinism; and
the whole tiny GPTModel giving the same logits and gradients in both kernel
modes."""
import numpy as np
import pytest

pytest.importorskip("numba")

import numgpt  # noqa: E402
from numgpt import backend  # noqa: E402
from numgpt.kernels import NUMBA_TWINS  # noqa: E402
from numgpt.kernels import adamw as k_adamw  # noqa: E402
from numgpt.kernels import attention as k_attention  # noqa: E402
from numgpt.kernels import cross_entropy as k_cross_entropy  # noqa: E402
from numgpt.kernels import embedding as k_embedding  # noqa: E402
from numgpt.kernels import gelu as k_gelu  # noqa: E402
from numgpt.kernels import layer_norm as k_layer_norm  # noqa: E402
from numgpt.kernels import matmul as k_matmul  # noqa: E402
from numgpt.model import PRESETS, GPTModel  # noqa: E402
from numgpt.ops.attention import attention_backward, attention_forward  # noqa: E402
from numgpt.ops.cross_entropy import IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward  # noqa: E402
from numgpt.ops.embedding import embedding_backward, embedding_forward  # noqa: E402
from numgpt.ops.gelu import gelu_backward, gelu_forward  # noqa: E402
from numgpt.ops.layer_norm import layer_norm_backward, layer_norm_forward  # noqa: E402
from numgpt.ops.dropout import dropout_mask  # noqa: E402
from numgpt.ops.linear import matmul  # noqa: E402
from numgpt.optim import adamw_update, sum_of_squares  # noqa: E402

B, T, C, NH, V = 3, 7, 12, 3, 37

# float32 tolerances, relative to the largest magnitude of the reference tensor
FLOAT32_RTOL = {
    "attention.out": 1e-6, "attention.dqkv": 2e-6,
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


def test_every_twin_is_registered_under_its_numpy_name():
    twins = {f.__name__: f for f in (attention_forward, attention_backward,
                                     layer_norm_forward, layer_norm_backward,
                                     gelu_forward, gelu_backward,
                                     cross_entropy_forward, cross_entropy_backward,
                                     adamw_update, sum_of_squares, embedding_backward, matmul)}
    assert set(NUMBA_TWINS) == set(twins)
    for name, kernel in NUMBA_TWINS.items():
        assert kernel.__name__ == name
        backend.set_kernel_mode("numba")
        assert backend.dispatch(twins[name]) is kernel
    backend.set_kernel_mode("numpy")
    assert backend.dispatch(twins["gelu_forward"]) is gelu_forward
    backend.set_kernel_mode(backend._initial_kernel_mode())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_matches_numpy(dtype, with_mask):
    qkv = randn((B, T, 3 * C), 0, dtype, scale=2.0)
    mask = dropout_mask((B, NH, T, T), 0.3) if with_mask else None
    out, cache = k_attention.attention_forward(qkv, NH, mask)
    want_out, want_cache = attention_forward(qkv, NH, mask)
    assert type(cache) is type(want_cache)
    assert_close("attention.out", out, want_out, tol("attention.out", dtype))
    assert_close("attention.att", cache.att, want_cache.att, tol("attention.out", dtype))
    dout = randn((B, T, C), 1, dtype)
    assert_close("attention.dqkv", k_attention.attention_backward(dout, cache),
                 attention_backward(dout, want_cache), tol("attention.dqkv", dtype))


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
            want = matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.float32)
            got = k_matmul.matmul(a, b)
            assert_close(f"matmul.out {shape} stack {stack} a.T {a_transposed} b.T {b_transposed}", got, want,
                         tol("matmul.out", np.float32))
            out = np.full(want.shape, np.nan, dtype=np.float32)             # every element must be written
            assert k_matmul.matmul(a, b, out=out) is out
            assert np.array_equal(out, got)


@needs_avx512
def test_matmul_kernel_propagates_inf_and_nan():
    a, b = matmul_operands((37, 50, 61), False, True)
    a[3, 7], a[20, 0], b[5, 60] = np.inf, np.nan, -np.inf
    want = matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.float32)
    assert np.isnan(want).any() and np.isinf(want).any()
    assert_close("matmul.out with inf and NaN", k_matmul.matmul(a, b), want, tol("matmul.out", np.float32))


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
                results.append(k_matmul.matmul(a, b))
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
    qkv = randn((B, T, 3 * C), 0, np.float32)
    mask = dropout_mask((B, NH, T, T), 0.1)
    dout = randn((B, T, C), 1, np.float32)
    x = randn((40, C), 2, np.float32)                               # more rows than one LayerNorm chunk
    w, b = randn((C,), 3, np.float32), randn((C,), 4, np.float32)
    runs = []
    for _ in range(2):
        out, cache = k_attention.attention_forward(qkv, NH, mask)
        dqkv = k_attention.attention_backward(dout, cache)
        ln_out, ln_cache = k_layer_norm.layer_norm_forward(x, w, b)
        runs.append((out, dqkv, ln_out) + k_layer_norm.layer_norm_backward(x, ln_cache))
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
        assert dispatcher.signatures, f"{dispatcher.py_func.__name__} never compiled"


def test_fused_qkv_weight_is_the_shared_buffer_and_survives_load_state_dict():
    from numgpt import ops
    numgpt.manual_seed(0)
    model = GPTModel(dict(PRESETS["tiny"], qkv_bias=True))
    att = model.trf_blocks[0].att
    projections = (att.W_query, att.W_key, att.W_value)
    fused = ops.concat([p.weight for p in projections]).data                 # (3C, C), no copy
    assert fused.shape == (3 * att.d_out, att.d_out) and all(np.shares_memory(fused, p.weight.data) for p in projections)
    assert np.shares_memory(ops.concat([p.bias for p in projections]).data, att.W_value.bias.data)
    state = {key: value * 2 for key, value in model.state_dict().items()}
    model.load_state_dict(state)
    fused = ops.concat([p.weight for p in projections]).data
    assert np.array_equal(fused[att.d_out:2 * att.d_out], state["trf_blocks.0.att.W_key.weight"])
    assert np.shares_memory(fused, att.W_key.weight.data)
    # arrays that are not consecutive views of one buffer are still concatenated (copied)
    swapped = ops.concat([att.W_key.weight, att.W_query.weight, att.W_value.weight]).data
    assert not np.shares_memory(swapped, att.W_key.weight.data)
    assert np.array_equal(swapped[:att.d_out], att.W_key.weight.data)


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
