"""bf16-mixed precision (numgpt/precision.py): numgpt.autocast as torch.autocast is used; the
linear and attention products under it, in the kernel mode this suite runs in (NumPy references
with NUMGPT_KERNELS=numpy, numba twins otherwise), against float64 products of bf16-rounded
operands; the weight cache (rounded once per optimizer step); a tiny GPT trained in bf16-mixed
against float32; and numgpt train --precision."""
import json
import weakref

import numpy as np
import pytest

import numgpt
from numgpt import backend, ops, registry
from numgpt.autograd import Tensor
from numgpt.bf16 import from_bf16_bits, round_to_bf16
from numgpt.cli import main
from numgpt.errors import UsageError
from numgpt.gradcheck import gradcheck
from numgpt.ops.attention import attention_backward, attention_forward
from numgpt.ops.linear import linear_backward, linear_forward
from numgpt.precision import (autocast, autocast_weight, clear_autocast_cache, is_autocast_enabled,
                              weight_roundings)

# float32 accumulation error of a product against its float64 value, relative to sum_k |a_ik b_kj|
# (the bound of a float32 sum of K terms is about K * 6e-8; K <= 130 here, and BLAS blocks sum in
# shorter chains): a product whose operands were not rounded to bf16 misses by about 2^-9 = 2e-3
FLOAT32_ACCUMULATION = 1e-5
# one rounding to bf16 (8 significant bits) moves a value by at most half an ulp: 2^-8 of it
BF16_HALF_ULP = 2.0 ** -8
# attention rounds intermediate weights (P o Z, dS) to bf16 where they enter a product; the reference
# and the flash twin round them at different points (the flash forward rounds P before normalising,
# the backward's D is dout . out where the reference sums datt . att), so each lies within a few bf16
# half-ulps (2^-9) of a float64 computation on rounded q, k, v and dout, relative to the largest
# magnitude of the tensor (or to 1, the inputs' scale, where it is 0)
ATTENTION_BF16_RTOL = 8e-3
# a tiny GPT trained 10 steps on one batch in bf16-mixed against float32, same seed: the products'
# relative error is about 2^-9 per operand; the loss (ln 97 = 4.6 at the start) falls by about 1, and
# the two runs measured 1e-3 apart (a tenth of this): a bf16 bug that changes the gradients' direction
# (a wrong operand, a product left out) moves the loss by more
TRAINED_LOSS_ATOL = 1e-2

# (lead shape of x, IN, OUT): M, N, K not multiples of 16, K = 1, a single row, a batch of rows
LINEAR_SHAPES = [((1,), 1, 1), ((1,), 17, 5), ((33,), 1, 19), ((37,), 45, 29), ((3, 5), 70, 130), ((2, 1), 3, 40)]


def rng(seed):
    return np.random.default_rng(seed)


def rounded64(a):
    return round_to_bf16(a).astype(np.float64)


def worst_relative(got, want, scale):
    """max |got - want| / scale (scale: the sum of the absolute terms, or a magnitude)."""
    return float(np.max(np.abs(got.astype(np.float64) - want) / np.maximum(scale, 1e-30)))


# ---------------------------------------------------------------- numgpt.autocast
def test_autocast_nests_and_restores_as_torch_autocast():
    assert not is_autocast_enabled()
    with numgpt.autocast("cpu", dtype="bfloat16"):
        assert is_autocast_enabled() and numgpt.is_autocast_enabled()
        with numgpt.autocast(enabled=False):
            assert not is_autocast_enabled()
            with autocast(dtype="bf16"):
                assert is_autocast_enabled()
            assert not is_autocast_enabled()
        assert is_autocast_enabled()
    assert not is_autocast_enabled()


def test_autocast_is_restored_when_the_block_raises():
    with pytest.raises(KeyError):
        with autocast():
            raise KeyError("inside")
    assert not is_autocast_enabled()


@pytest.mark.parametrize("kwargs, named", [
    (dict(device_type="cuda"), "device_type='cuda'"),
    (dict(dtype="float16"), "dtype='float16'"),
    (dict(dtype=np.float32), "dtype=<class 'numpy.float32'>"),
    (dict(enabled="yes"), "enabled='yes'"),
])
def test_autocast_refuses_what_it_cannot_do(kwargs, named):
    with pytest.raises(UsageError, match=named.replace("(", r"\(").replace(")", r"\)")):
        autocast(**kwargs)


def test_float64_and_autocast_off_run_unchanged():
    x, w = rng(0).standard_normal((4, 6)), rng(1).standard_normal((3, 6))
    with autocast():
        out, cache = linear_forward(x, w)               # float64: left as it is, as torch.autocast does
    assert not cache.bf16 and out.dtype == np.float64
    np.testing.assert_array_equal(out, x @ w.T)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    with autocast(), autocast(enabled=False):
        out, cache = linear_forward(x32, w32)
    assert not cache.bf16
    np.testing.assert_array_equal(out, x32 @ w32.T)


# ---------------------------------------------------------------- linear
def linear_pair():
    """The (forward, backward) this suite's kernel mode runs for linear."""
    return registry.resolve(linear_forward, linear_backward, np.empty(1, np.float32))


@pytest.mark.parametrize("lead, IN, OUT", LINEAR_SHAPES)
def test_bf16_linear_is_the_product_of_rounded_operands(lead, IN, OUT):
    r = rng(IN * 1000 + OUT)
    x = r.standard_normal(lead + (IN,)).astype(np.float32)
    w = r.standard_normal((OUT, IN)).astype(np.float32)
    b = r.standard_normal(OUT).astype(np.float32)
    dout = r.standard_normal(lead + (OUT,)).astype(np.float32)
    forward, backward = linear_pair()
    with autocast():
        out, cache = forward(x, w, b)
    dx, dw, db = backward(dout, cache)                  # outside the block: the forward decided
    assert cache.bf16
    for array in (out, dx, dw, db):
        assert array.dtype == np.float32

    x2, d2 = x.reshape(-1, IN), dout.reshape(-1, OUT)
    xr, wr, dr = rounded64(x2), rounded64(w), rounded64(d2)
    products = {                                        # name: (got, float64 of rounded operands, sum |terms|)
        "out": (out.reshape(-1, OUT) - b, xr @ wr.T, np.abs(xr) @ np.abs(wr.T)),
        "dx": (dx.reshape(-1, IN), dr @ wr, np.abs(dr) @ np.abs(wr)),
        "dweight": (dw, dr.T @ xr, np.abs(dr.T) @ np.abs(xr)),
    }
    for name, (got, want, scale) in products.items():
        error = worst_relative(got, want, scale)
        print(f"{name} {lead + (IN,)} x ({OUT}, {IN}): worst error {error:.2e} of sum |terms|")
        assert error <= FLOAT32_ACCUMULATION, name
        unrounded = {"out": x2.astype(np.float64) @ w.T.astype(np.float64),
                     "dx": d2.astype(np.float64) @ w.astype(np.float64),
                     "dweight": d2.T.astype(np.float64) @ x2.astype(np.float64)}[name]
        assert worst_relative(unrounded, want, scale) > 10 * FLOAT32_ACCUMULATION, \
            f"{name}: the check cannot tell rounded operands from float32 ones"
    np.testing.assert_allclose(db, d2.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)   # float32


def test_bf16_linear_backward_is_the_derivative_at_the_rounded_operands():
    """The bf16 op is x~ W~^T with x~, W~ the rounded operands: piecewise constant in x and W, so
    finite differences of it are 0 or jumps. Its gradient is the derivative of the float64 linear
    at (x~, W~) (gradcheck below, on inputs already on the bf16 grid) with the backward's own
    products on bf16 operands (dout rounded: the test above); so it is within one rounding of
    dout (half a bf16 ulp: 2^-8 relative, to the sum of the terms) of that exact derivative."""
    r = rng(7)
    x = rounded64(r.standard_normal((5, 9)).astype(np.float32))
    w = rounded64(r.standard_normal((4, 9)).astype(np.float32))
    b = r.standard_normal(4)
    inputs = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    result = gradcheck(lambda *t: ops.linear(*t), inputs, names=["x", "weight", "bias"])
    print(result.describe())
    assert result.ok

    dout = r.standard_normal((5, 4)).astype(np.float32)
    forward, backward = linear_pair()
    with autocast():
        _, cache = forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32))
    dx, dw, _ = backward(dout, cache)
    d64 = dout.astype(np.float64)
    for name, got, want, scale in (("dx", dx, d64 @ w, np.abs(d64) @ np.abs(w)),
                                   ("dweight", dw, d64.T @ x, np.abs(d64.T) @ np.abs(x))):
        error = worst_relative(got, want, scale)
        print(f"{name}: {error:.2e} from the exact derivative at the rounded operands")
        assert error <= BF16_HALF_ULP + FLOAT32_ACCUMULATION, name


def test_the_tape_runs_linear_and_its_fused_forms_in_bf16():
    """ops.linear, ops.linear_gelu and ops.swiglu_linear under autocast: their outputs are those of
    their float32 op-by-op forms with the product's operands rounded first (x or SwiGLU's h, and W)."""
    r = rng(3)
    x, w, gate = (Tensor(r.standard_normal(shape).astype(np.float32), requires_grad=True)
                  for shape in ((2, 3, 6), (5, 6), (2, 3, 6)))
    def bf16(t):
        return Tensor(round_to_bf16(t.data))
    cases = {"linear": (lambda: ops.linear(x, w), lambda: ops.linear(bf16(x), bf16(w))),
             "linear_gelu": (lambda: ops.linear_gelu(x, w), lambda: ops.gelu(ops.linear(bf16(x), bf16(w)))),
             "swiglu_linear": (lambda: ops.swiglu_linear(gate, x, w),
                               lambda: ops.linear(bf16(ops.swiglu(gate, x)), bf16(w)))}
    for name, (fn, rounded_first) in cases.items():
        with autocast():
            got = fn()
        want = rounded_first().data
        assert got.data.dtype == np.float32
        scale = float(np.max(np.abs(want)))
        error = float(np.max(np.abs(got.data - want))) / scale
        print(f"{name}: worst error {error:.2e} of its largest magnitude, against its float32 form on rounded "
              f"operands")
        assert error <= FLOAT32_ACCUMULATION, name
        assert float(np.max(np.abs(fn().data - want))) / scale > 10 * FLOAT32_ACCUMULATION, \
            f"{name}: the check cannot tell rounded operands from float32 ones"


# ---------------------------------------------------------------- attention
def attention64(q, k, v, dout, NH):
    """float64 causal attention on rounded q, k, v and its backward with a rounded dout, no intermediate
    rounding: the ideal both sides approach."""
    B, T, C = q.shape
    HS = C // NH
    qh, kh, vh, dy = (rounded64(a).reshape(B, T, NH, HS).transpose(0, 2, 1, 3) for a in (q, k, v, dout))
    s = qh @ kh.swapaxes(-1, -2) / np.sqrt(HS)
    s[..., np.triu(np.ones((T, T), bool), 1)] = -np.inf
    att = np.exp(s - s.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    y = att @ vh
    datt = dy @ vh.swapaxes(-1, -2)
    ds = att * (datt - (datt * att).sum(-1, keepdims=True)) / np.sqrt(HS)
    def merge(a):
        return a.transpose(0, 2, 1, 3).reshape(B, T, C)
    return {"out": merge(y), "dq": merge(ds @ kh), "dk": merge(ds.swapaxes(-1, -2) @ qh),
            "dv": merge(att.swapaxes(-1, -2) @ dy)}


@pytest.mark.parametrize("B, T, NH, HS", [(1, 1, 1, 6), (2, 70, 3, 5), (1, 129, 2, 16)])
def test_bf16_attention_is_the_attention_of_rounded_operands(B, T, NH, HS):
    r = rng(T)
    q, k, v, dout = (r.standard_normal((B, T, NH * HS)).astype(np.float32) for _ in range(4))
    want = attention64(q, k, v, dout, NH)
    forward, backward = registry.resolve(attention_forward, attention_backward, q)
    results = {}
    for bf16 in (True, False):
        with autocast(enabled=bf16):
            out, cache = forward(q, k, v, NH)
        results[bf16] = dict(zip(("out", "dq", "dk", "dv"), (out,) + tuple(backward(dout, cache))))
    assert cache.bf16 is False
    for name, got in results[True].items():
        assert got.dtype == np.float32
        scale = max(float(np.max(np.abs(want[name]))), 1.0)    # 1 for a tensor that is 0 (dq with one key)
        error = worst_relative(got, want[name], scale)
        plain = worst_relative(results[False][name], want[name], scale)
        print(f"{name} ({B}, {T}, {NH} x {HS}): worst error {error:.2e} of its largest magnitude "
              f"(float32 operands: {plain:.2e})")
        assert error <= ATTENTION_BF16_RTOL, name
    if T == 1:                          # one position: att = 1, out = v rounded, exactly (the rounding is seen)
        np.testing.assert_array_equal(results[True]["out"], round_to_bf16(v))
        assert not np.array_equal(results[False]["out"], round_to_bf16(v))


def test_bf16_attention_reference_and_flash_twin_agree():
    pytest.importorskip("numba")
    from numgpt.kernels import attention as flash
    r = rng(11)
    B, T, NH, HS = 2, 75, 2, 12
    q, k, v, dout = (r.standard_normal((B, T, NH * HS)).astype(np.float32) for _ in range(4))
    with autocast():
        ref_out, ref_cache = attention_forward(q, k, v, NH)
        twin_out, twin_cache = flash.attention_forward(q, k, v, NH)
    assert ref_cache.bf16 and twin_cache.bf16
    ref = (ref_out,) + tuple(attention_backward(dout, ref_cache))
    twin = (twin_out,) + tuple(flash.attention_backward(dout, twin_cache))
    for name, a, b in zip(("out", "dq", "dk", "dv"), ref, twin):
        scale = float(np.max(np.abs(a)))
        error = worst_relative(b, a.astype(np.float64), scale)
        print(f"{name}: flash twin against the reference, worst {error:.2e} of its largest magnitude")
        assert error <= 2 * ATTENTION_BF16_RTOL, name


# ---------------------------------------------------------------- the weight cache
def tiny_model(seed=0):
    numgpt.manual_seed(seed)
    cfg = dict(numgpt.GPT_CONFIG_124M, vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2,
               drop_rate=0.0)
    return numgpt.GPTModel(cfg)


def batches(seed, n, B=2, T=16, vocab=97):
    r = rng(seed)
    return [(r.integers(0, vocab, (B, T)), r.integers(0, vocab, (B, T))) for _ in range(n)]


def loss_of(model, inputs, targets):
    logits = model(inputs)
    return ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def test_weights_are_rounded_once_per_optimizer_step():
    model = tiny_model()
    optimizer = numgpt.AdamW(model.parameters(), lr=1e-3)
    data = batches(0, 2)
    clear_autocast_cache()
    start = weight_roundings()
    with autocast():                                    # micro-batch 1 of a step of two
        loss = loss_of(model, *data[0])
    per_step = weight_roundings() - start
    assert per_step == 2 * 6 + 1, "W_query, W_key, W_value, out_proj, fc and proj in each block, and the head"
    (loss * 0.5).backward()
    with autocast():                                    # micro-batch 2
        loss = loss_of(model, *data[1])
    (loss * 0.5).backward()
    assert weight_roundings() - start == per_step, "the backward or the second micro-batch rounded weights again"
    optimizer.step()
    with autocast():
        loss_of(model, *data[0]).backward()
    assert weight_roundings() - start == 2 * per_step, "the step did not drop the rounded weights"

    model.load_state_dict({name: value * 0.5 for name, value in model.state_dict().items()})
    before = weight_roundings()
    with autocast():
        out = model(data[0][0])
    assert weight_roundings() - before == per_step, "load_state_dict did not drop the rounded weights"
    head = model.out_head.weight
    head.data = head.data * 2.0                          # the data replaced
    with autocast():
        doubled = model(data[0][0])
    assert weight_roundings() - before == per_step + 1
    assert not np.allclose(out.data, doubled.data)


def test_a_weights_next_copy_reuses_a_spare_only_when_nothing_holds_it():
    """After an optimizer step the last copies are spares to round into (kernel mode numba: no
    page faults for fresh memory): a copy something still holds (a graph, a user) keeps its
    values; a free one of the same shape is rounded into and takes the new values."""
    from numgpt.autograd import Tensor
    weight = Tensor(np.linspace(-3, 3, 48, dtype=np.float32).reshape(6, 8), requires_grad=True)
    other = Tensor(np.full((6, 8), 1.7, dtype=np.float32), requires_grad=True)
    clear_autocast_cache()
    with autocast():
        free = weakref.ref(autocast_weight(other))      # a copy of the same shape that nothing holds
        held = autocast_weight(weight)                  # the spare tried first
    kept = held.copy()
    clear_autocast_cache()
    weight.data *= 2.0                                  # the step changed the weights in place
    with autocast():
        fresh = autocast_weight(weight)
    assert fresh is not held
    np.testing.assert_array_equal(held, kept)           # the held copy was not rounded into
    if backend.get_kernel_mode() == "numba":
        assert fresh is free(), "the free spare was not reused"
    bits = fresh.dtype == np.uint16                     # the matrix units' paths keep bf16 bits
    assert fresh.dtype == (np.uint16 if backend.get_kernel_mode() == "numba" and numgpt.precision.bf16_path()
                           != "emulated" else np.float32)
    np.testing.assert_array_equal(from_bf16_bits(fresh) if bits else fresh, round_to_bf16(weight.data))


# ---------------------------------------------------------------- training
def train_steps(bf16, steps=10):
    model = tiny_model(seed=1)
    optimizer = numgpt.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    losses = []
    for inputs, targets in batches(2, 1) * steps:          # one batch, learned by heart
        optimizer.zero_grad()
        with autocast(enabled=bf16):
            loss = loss_of(model, inputs, targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert loss.data.dtype == np.float32
    for p in model.parameters():
        state = optimizer.state[id(p)]
        assert {p.data.dtype, p.grad.dtype, state["exp_avg"].dtype, state["exp_avg_sq"].dtype} == {np.dtype(np.float32)}
    return np.array(losses)


def test_a_tiny_gpt_trained_in_bf16_mixed_stays_close_to_float32():
    bf16, fp32 = train_steps(True), train_steps(False)
    print("bf16-mixed", bf16.round(5), "\n32-true   ", fp32.round(5))
    print(f"worst loss difference {np.max(np.abs(bf16 - fp32)):.2e}")
    assert np.max(np.abs(bf16 - fp32)) <= TRAINED_LOSS_ATOL
    assert fp32[-1] < fp32[0] - 0.5 and bf16[-1] < bf16[0] - 0.5, "the runs did not learn"
    assert not np.array_equal(bf16, fp32), "bf16-mixed ran the float32 products"


# ---------------------------------------------------------------- numgpt train --precision
TINY = ["--preset", "tiny", "--context-length", "16", "--batch-size", "4", "--eval-iter", "1", "--eval-freq", "100"]


def test_train_refuses_bf16_true_in_one_line(tmp_path, capsys):
    for value, said in (("bf16-true", "argument --precision: bf16-true is an inference precision"),
                        ("16-mixed", "expected one of 32-true, bf16-mixed, got '16-mixed'")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--out", str(tmp_path / "run"), "--precision", value])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and said in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.fixture(params=["emulate", "avx512", "amx"])
def forced_bf16_path(request, monkeypatch):
    """Each bf16 path (NUMGPT_BF16) this CPU and kernel mode can run, for one test; the kernels'
    detection decides once per process, so it is asked again before and after."""
    if request.param != "emulate" and backend.get_kernel_mode() != "numba":
        pytest.skip("the NumPy kernel mode runs the emulation only")
    monkeypatch.setenv("NUMGPT_BF16", request.param)
    detected = None
    if backend.get_kernel_mode() == "numba":
        from numgpt.kernels import bf16_detect
        detected = bf16_detect.bf16_path
        detected.cache_clear()
        try:
            detected()
        except UsageError as refusal:
            detected.cache_clear()
            pytest.skip(str(refusal))
    yield request.param
    monkeypatch.undo()
    if detected is not None:
        detected.cache_clear()


def test_train_records_bf16_mixed_and_resumes_in_it(tmp_path, capsys, forced_bf16_path):
    out = tmp_path / "run"
    notices = 1 if forced_bf16_path == "emulate" else 0       # said once where the products are emulated
    assert main(["train", "--out", str(out), *TINY, "--precision", "bf16-mixed", "--max-steps", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("runs emulated") == notices, err
    assert json.loads((out / "settings.json").read_text())["train"]["precision"] == "bf16-mixed"
    assert main(["train", "--resume", "--out", str(out), "--precision", "32-true", "--max-steps", "3"]) == 2
    assert "--precision 32-true contradicts this run's precision = 'bf16-mixed'" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(out), "--max-steps", "3"]) == 0
    assert capsys.readouterr().err.count("runs emulated") == notices
    assert json.loads((out / "settings.json").read_text())["train"]["precision"] == "bf16-mixed"
    assert not is_autocast_enabled()


def test_a_resumed_run_refuses_a_precision_it_cannot_train_in(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--max-steps", "1"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["train"]["precision"] == "32-true"
    settings["train"]["precision"] = "bf16-true"
    (out / "settings.json").write_text(json.dumps(settings))
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "precision" in err[0] and "'bf16-true'" in err[0] and "'bf16-mixed'" in err[0], err
