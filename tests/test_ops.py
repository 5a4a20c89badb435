"""Every op against float64 central differences (random upstream gradient),
float32 in gives float32 out, and the checker itself rejects broken backwards."""
import numpy as np
import pytest

import numgpt
from numgpt import ops
from numgpt.autograd import Tensor, record
from numgpt.gradcheck import case_inputs, op_cases

# float64 gradcheck tolerances (numgpt.gradcheck's float64 defaults, from its measured noise, stated here once)
GRAD_EPS, GRAD_ATOL, GRAD_RTOL = 1e-6, 1e-6, 1e-6


def rand(shape, seed, scale=1.0, dtype=np.float64):
    return Tensor((np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype), requires_grad=True)


def check(fn, *inputs):
    result = numgpt.gradcheck(fn, inputs, eps=GRAD_EPS, atol=GRAD_ATOL, rtol=GRAD_RTOL)
    print(result.describe())
    assert result.ok


OP_CASES = op_cases()


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_op_gradient_matches_central_differences(name):
    case = OP_CASES[name]
    check(case.fn, *case_inputs(case.shapes))


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_op_keeps_float32(name):
    fn, shapes = OP_CASES[name].fn, OP_CASES[name].shapes
    inputs = case_inputs(shapes, dtype=np.float32)
    out = fn(*inputs)
    assert out.dtype == np.float32
    out.backward(np.ones(out.shape, dtype=np.float32))
    for t in inputs:
        assert t.grad.dtype == np.float32, name


TARGETS = np.array([1, 0, -100, 4, 2, 2])


def test_cross_entropy_matches_the_definition():
    logits = np.random.default_rng(0).standard_normal((6, 5))
    loss = ops.cross_entropy(Tensor(logits), TARGETS).item()
    keep = TARGETS != -100
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_probs[keep, TARGETS[keep]].mean()
    assert abs(loss - expected) < 1e-12


def test_cross_entropy_stays_finite_for_huge_logits():
    logits = Tensor(np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=np.float32), requires_grad=True)
    loss = ops.cross_entropy(logits, np.array([0, 2]))
    loss.backward()
    assert np.isfinite(loss.item()) and np.all(np.isfinite(logits.grad))
    assert abs(loss.item() - np.log(2) / 2) < 1e-6


def test_attention_is_causal():
    q, k, v = rand((1, 6, 4), 0), rand((1, 6, 4), 1), rand((1, 6, 4), 2)
    out = ops.causal_attention(q, k, v, 2).data
    future = [t.data.copy() for t in (q, k, v)]
    for array in future:
        array[0, 4:] += 10.0          # perturb the future of position 3
    out2 = ops.causal_attention(*map(Tensor, future), 2).data
    np.testing.assert_array_equal(out[0, :4], out2[0, :4])
    assert not np.allclose(out[0, 4:], out2[0, 4:])


def test_dropout_is_inverted_and_seeded():
    x = Tensor(np.ones((200, 100), dtype=np.float32))
    numgpt.manual_seed(1)
    a = ops.dropout(x, 0.25, training=True).data
    numgpt.manual_seed(1)
    b = ops.dropout(x, 0.25, training=True).data
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.01
    assert ops.dropout(x, 0.25, training=False) is x


def square_with_backward(backward):
    def op(x):
        return record(x.data ** 2, (x,), lambda dout: (backward(dout, x.data),))
    return op


def softmax_with_backward(backward):
    def op(x):
        e = np.exp(x.data - x.data.max(axis=-1, keepdims=True))
        s = e / e.sum(axis=-1, keepdims=True)
        return record(s, (x,), lambda dout: (backward(dout, s),))
    return op


def test_checker_accepts_a_correct_backward():
    correct = softmax_with_backward(lambda dout, s: s * (dout - (dout * s).sum(axis=-1, keepdims=True)))
    assert numgpt.gradcheck(correct, [rand((3, 4), 0)]).ok


def test_checker_rejects_a_broken_backward():
    off_by_factor = square_with_backward(lambda dout, x: dout * x)      # should be 2 x dout
    with pytest.raises(numgpt.GradcheckError, match="FAILED"):
        numgpt.gradcheck(off_by_factor, [rand((3, 4), 0)])


def test_checker_rejects_a_softmax_backward_that_a_sum_would_hide():
    # sum(softmax(x)) is constant, so a zero gradient looks right under .sum();
    # the random upstream gradient exposes it
    zero = softmax_with_backward(lambda dout, s: np.zeros_like(s))
    result = numgpt.gradcheck(zero, [rand((3, 4), 0)], raise_exception=False)
    print(result.describe())
    assert not result.ok


def test_checker_rejects_a_bad_step_size():
    # float64 central differences with h = 1e-14 are swamped by rounding
    def gelu_like(x):
        return ops.gelu(x) * 1e3
    result = numgpt.gradcheck(gelu_like, [rand((4,), 0)], eps=1e-14, raise_exception=False)
    assert not result.ok


def test_checker_needs_float64():
    with pytest.raises(TypeError, match="float64"):
        numgpt.gradcheck(ops.gelu, [rand((3,), 0, dtype=np.float32)])
