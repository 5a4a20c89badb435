"""The fused epilogues (numgpt/ops/fused.py, kernels/fused.py): each numba twin
against its reference (the reference ops one by one) on odd shapes, in float32
within named tolerances and in float64 to round-off; bit for bit against the
op-by-op numba twins; the several-output node in the autograd; and when the
fused op runs (numba mode, no learner's backward) and when its parts run one
by one."""
import contextlib

import numpy as np
import pytest

pytest.importorskip("numba")

import numgpt  # noqa: E402
from numgpt import backend, ops, registry  # noqa: E402
from numgpt.autograd import Tensor, record_outputs  # noqa: E402
from numgpt.gradcheck import kernel_mode  # noqa: E402
from numgpt.kernels import fused as k_fused  # noqa: E402
from numgpt.models.gpt import GPTModel  # noqa: E402
from numgpt.ops import fused as f_ref  # noqa: E402
from numgpt.ops.dropout import dropout_mask  # noqa: E402

# float32 tolerances of a twin against its NumPy reference, relative to the reference's largest magnitude
FLOAT32_RTOL = {"linear_gelu.out": 2e-6, "linear_gelu.grads": 5e-6,
                "dropout_add.out": 0.0, "dropout_add.grads": 0.0,   # the same float32 operations, element-wise
                "layer_norm.out": 2e-6, "layer_norm.s": 0.0, "layer_norm.grads": 5e-6}
FLOAT64_RTOL = 1e-12

# rows x columns that cut the kernels' spans and chunks unevenly (N = 1, odd C, F not a multiple of anything)
SHAPES = [((1, 1, 5), 3), ((3, 37, 70), 300), ((2, 7, 768), 3072)]


def randn(shape, seed, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def assert_close(name, got, want, rtol):
    """|got - want| <= rtol * max|want|; prints the worst error."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, want.shape, got.dtype, want.dtype)
    scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
    worst = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0)) / scale
    print(f"{name} ({got.dtype}): worst error {worst:.2e} of max |ref| {scale:.3g} (tolerance {rtol:.0e})")
    assert worst <= rtol, f"{name}: worst relative error {worst:.3e} > {rtol:.0e}"


def tol(name, dtype):
    return FLOAT32_RTOL[name] if dtype == np.float32 else FLOAT64_RTOL


def keep_mask(shape, p=0.3, seed=5):
    backend.manual_seed(seed)
    return dropout_mask(shape, p)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, F", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gelu_twin_matches_the_reference(dtype, shape, F, bias):
    x, w = randn(shape, 0, dtype), randn((F, shape[-1]), 1, dtype, 0.2)
    b = randn((F,), 2, dtype) if bias else None
    out, cache = k_fused.linear_gelu_forward(x, w, b)
    want, want_cache = f_ref.linear_gelu_forward(x, w, b)
    assert type(cache) is type(want_cache) and type(cache.linear) is type(want_cache.linear)
    assert_close("linear_gelu.out", out, want, tol("linear_gelu.out", dtype))
    dout = randn(out.shape, 3, dtype)
    got, wanted = k_fused.linear_gelu_backward(dout, cache), f_ref.linear_gelu_backward(dout, want_cache)
    for name, g, w_ in zip(("dx", "dweight", "dbias"), got, wanted):
        if w_ is None:
            assert g is None, name
        else:
            assert_close(f"linear_gelu.{name}", g, w_, tol("linear_gelu.grads", dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [s for s, _ in SHAPES])
@pytest.mark.parametrize("dropped", [True, False])
def test_dropout_add_twin_matches_the_reference(dtype, shape, dropped):
    x, y = randn(shape, 0, dtype), randn(shape, 1, dtype)
    mask = keep_mask(shape) if dropped else None
    out, cache = k_fused.dropout_add_forward(x, y, mask)
    want, want_cache = f_ref.dropout_add_forward(x, y, mask)
    assert_close("dropout_add.out", out, want, tol("dropout_add.out", dtype))
    dout = randn(shape, 2, dtype)
    for name, g, w_ in zip(("dx", "dy"), k_fused.dropout_add_backward(dout, cache),
                           f_ref.dropout_add_backward(dout, want_cache)):
        assert_close(f"dropout_add.{name}", g, w_, tol("dropout_add.grads", dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [s for s, _ in SHAPES])
@pytest.mark.parametrize("dropped", [True, False])
@pytest.mark.parametrize("used", ["both", "stream", "norm"])
def test_dropout_add_layer_norm_twin_matches_the_reference(dtype, shape, dropped, used):
    C = shape[-1]
    x, y = randn(shape, 0, dtype, 3.0), randn(shape, 1, dtype)
    weight, bias = randn((C,), 2, dtype), randn((C,), 3, dtype)
    mask = keep_mask(shape) if dropped else None
    (s, out), cache = k_fused.dropout_add_layer_norm_forward(x, y, mask, weight, bias)
    (want_s, want_out), want_cache = f_ref.dropout_add_layer_norm_forward(x, y, mask, weight, bias)
    assert type(cache.layer_norm) is type(want_cache.layer_norm)
    assert_close("layer_norm.s", s, want_s, tol("layer_norm.s", dtype))
    assert_close("layer_norm.out", out, want_out, tol("layer_norm.out", dtype))
    ds = randn(shape, 4, dtype) if used in ("both", "stream") else None
    dout = randn(shape, 5, dtype) if used in ("both", "norm") else None
    got = k_fused.dropout_add_layer_norm_backward((ds, dout), cache)
    wanted = f_ref.dropout_add_layer_norm_backward((ds, dout), want_cache)
    for name, g, w_ in zip(("dx", "dy", "dweight", "dbias"), got, wanted):
        if w_ is None:
            assert g is None, name
        else:
            assert_close(f"layer_norm.{name}", g, w_, tol("layer_norm.grads", dtype))


def test_dropout_add_layer_norm_twin_with_no_gradient_gives_none():
    x = randn((2, 3, 4), 0, np.float32)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    _, cache = k_fused.dropout_add_layer_norm_forward(x, x, None, ones, zeros)
    assert k_fused.dropout_add_layer_norm_backward((None, None), cache) == (None,) * 4


def run_model(fusing, cfg, seed=123):
    """Loss and every gradient of one training step of a GPTModel with dropout, numba mode;
    ``fusing=False`` makes the fused ops run as their parts (registry.op_by_op)."""
    numgpt.manual_seed(seed)
    model = GPTModel(cfg)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, cfg["vocab_size"], (2, cfg["context_length"]))
    with kernel_mode("numba"), (contextlib.nullcontext() if fusing else registry.op_by_op()):
        loss = numgpt.calc_loss_batch(idx, rng.integers(0, cfg["vocab_size"], idx.shape), model)
        ops_used = {line.split()[1] for line in numgpt.explain(loss).splitlines()[1:]}
        loss.backward()
    return loss.item(), {name: p.grad for name, p in model.named_parameters()}, ops_used


def test_a_model_step_gives_the_same_bits_fused_and_op_by_op():
    cfg = dict(numgpt.GPT_CONFIG_124M, vocab_size=300, context_length=40, emb_dim=96, n_heads=4, n_layers=2,
               drop_rate=0.2, qkv_bias=True)
    loss, grads, fused_ops = run_model(True, cfg)
    loss_parts, grads_parts, part_ops = run_model(False, cfg)
    assert {"linear_gelu", "dropout_add", "dropout_add_layer_norm"} <= fused_ops
    assert not {"linear_gelu", "dropout_add", "dropout_add_layer_norm"} & part_ops
    print(f"loss fused {loss!r}, op by op {loss_parts!r}")
    assert loss == loss_parts                 # the dropout masks are drawn in the same order, from one generator
    for name in grads:
        assert grads[name].dtype == np.float32
        np.testing.assert_array_equal(grads[name], grads_parts[name], err_msg=name)


def test_the_registry_runs_the_parts_for_numpy_mode_a_learners_backward_and_op_by_op():
    x = Tensor(np.zeros((2, 4), np.float32))
    with kernel_mode("numba"):
        assert registry.fused(f_ref.dropout_add_layer_norm_forward, ("dropout", "add", "layer_norm"), x.data) \
            is registry.fused_twins()[f_ref.dropout_add_layer_norm_forward]
        with registry.use_backward("layer_norm", lambda dout, cache: None):
            assert registry.fused(f_ref.dropout_add_layer_norm_forward, ("dropout", "add", "layer_norm"),
                                  x.data) is None
            assert registry.fused(f_ref.linear_gelu_forward, ("linear", "gelu"), x.data) is not None
    with kernel_mode("numpy"):
        assert registry.fused(f_ref.linear_gelu_forward, ("linear", "gelu"), x.data) is None
    with kernel_mode("numba"), registry.op_by_op():
        assert registry.fused(f_ref.linear_gelu_forward, ("linear", "gelu"), x.data) is None


def test_a_learners_layer_norm_backward_reaches_every_layer_norm_of_the_model():
    from numgpt.ops.layer_norm import layer_norm_backward
    cfg = dict(numgpt.GPT_CONFIG_124M, vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=3)
    numgpt.manual_seed(1)
    model = GPTModel(cfg)
    calls = []

    def mine(dout, cache):
        calls.append(dout.shape)
        return layer_norm_backward(dout, cache)
    idx = np.zeros((1, 8), dtype=np.int64)
    with kernel_mode("numba"), registry.use_backward("layer_norm", mine):
        numgpt.calc_loss_batch(idx, idx, model).backward()
    assert len(calls) == 2 * cfg["n_layers"] + 1          # norm1 and norm2 of each block, and final_norm


def test_numpy_mode_records_the_model_op_by_op():
    cfg = dict(numgpt.GPT_CONFIG_124M, vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=2)
    numgpt.manual_seed(1)
    model = GPTModel(cfg)
    idx = np.zeros((1, 8), dtype=np.int64)
    with kernel_mode("numpy"):
        text = numgpt.explain(numgpt.calc_loss_batch(idx, idx, model))
    labels = [line.split()[1] for line in text.splitlines()[1:] if line.startswith("#")]
    assert "gelu" in labels and "dropout" in labels and "layer_norm" in labels
    assert not [label for label in labels if label.startswith(("linear_gelu", "dropout_add"))]


# ---------------------------------------------------------------- several outputs in the autograd
def two_outputs(a):
    """(2a, a^2) as one node: its backward sees both output gradients at once."""
    seen = []

    def backward(douts):
        seen.append(douts)
        d_double, d_square = douts
        total = np.zeros_like(a.data)
        if d_double is not None:
            total += 2.0 * d_double
        if d_square is not None:
            total += 2.0 * a.data * d_square
        return (total,)
    return record_outputs((2.0 * a.data, a.data ** 2), (a,), backward, "two"), seen


def test_a_several_output_node_runs_once_with_every_output_gradient():
    a = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    (double, square), seen = two_outputs(a)
    assert double._op == "two[0]" and square._op == "two[1]" and double._parents == square._parents
    loss = (double * square + square).sum()                   # both outputs, one of them twice
    loss.backward()
    assert len(seen) == 1
    x = a.data
    np.testing.assert_allclose(a.grad, 6 * x ** 2 + 2 * x)   # d/dx (2x * x^2 + x^2)


def test_an_unused_output_gets_none_and_gradients_accumulate():
    a = Tensor(np.array([0.5, 4.0]), requires_grad=True)
    for _ in range(2):
        (double, square), seen = two_outputs(a)
        square.sum().backward()
        assert seen[0][0] is None and seen[0][1] is not None
    np.testing.assert_allclose(a.grad, 2 * (2 * a.data))     # two backward passes accumulate


def test_several_outputs_under_no_grad_record_nothing():
    a = Tensor(np.ones(3), requires_grad=True)
    with numgpt.no_grad():
        (double, square), _ = two_outputs(a)
    assert not double.requires_grad and double._parents == () and square.is_leaf


def test_the_fused_layer_norm_in_the_graph_has_one_node_and_two_outputs():
    x = Tensor(randn((2, 3, 4), 0, np.float32), requires_grad=True)
    y = Tensor(randn((2, 3, 4), 1, np.float32), requires_grad=True)
    w, b = Tensor(np.ones(4, np.float32), requires_grad=True), Tensor(np.zeros(4, np.float32), requires_grad=True)
    with kernel_mode("numba"):
        s, n = ops.dropout_add_layer_norm(x, y, 0.0, False, w, b)
        text = numgpt.explain(ops.concat([s, n]))
    print(text)
    labels = [line.split()[1] for line in text.splitlines()[1:]]
    assert labels.count("dropout_add_layer_norm") == 1
    assert "dropout_add_layer_norm[0]" in labels and "dropout_add_layer_norm[1]" in labels
