"""The tape: accumulation (the diamond), no_grad, detach, errors."""
import numpy as np
import pytest

import numgpt
from numgpt import ops
from numgpt.autograd import Tensor


def make(shape, seed=0, dtype=np.float64):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=True)


def test_tensor_used_twice_gets_the_sum_of_both_gradients():
    # the residual diamond: out = linear(x) + x
    x, w = make((3, 4)), make((4, 4), seed=1)
    out = ops.linear(x, w) + x
    dout = np.random.default_rng(2).standard_normal((3, 4))
    out.backward(dout)
    np.testing.assert_allclose(x.grad, dout @ w.data + dout, rtol=1e-12)
    np.testing.assert_allclose(w.grad, dout.T @ x.data, rtol=1e-12)


def test_add_of_a_tensor_to_itself_does_not_alias_the_gradient():
    x = make((5,))
    y = x + x            # add's backward hands the same array to both parents
    z = y * 3.0
    z.backward(np.ones(5))
    np.testing.assert_array_equal(x.grad, np.full(5, 6.0))


def test_leaf_gradients_accumulate_across_backward_calls():
    x, w = make((2, 3)), make((3, 3), seed=1)
    ops.linear(x, w).sum().backward()
    first = w.grad.copy()
    ops.linear(x, w).sum().backward()
    np.testing.assert_allclose(w.grad, 2 * first, rtol=1e-12)


def test_parameter_gradient_is_a_copy_not_a_view_of_an_intermediate():
    x = make((4,))
    y = x * 1.0
    (y + y).backward(np.ones(4))
    grad = x.grad
    (x * 1.0).backward(np.ones(4))
    assert x.grad is grad and np.array_equal(grad, np.full(4, 3.0))


def test_no_grad_records_nothing():
    x = make((2, 2))
    with numgpt.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward(np.ones((2, 2)))
    assert (x * 2.0).requires_grad  # grad mode is back on


def test_detach_cuts_the_graph():
    x = make((3,))
    y = (x * 2.0).detach()
    assert not y.requires_grad
    np.testing.assert_array_equal(y.data, 2 * x.data)


def test_backward_of_a_non_scalar_needs_a_gradient():
    x = make((3,))
    with pytest.raises(RuntimeError, match="needs a scalar"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match="does not match"):
        (x * 2.0).backward(np.ones(4))


def test_the_graph_is_freed_after_backward_and_a_second_backward_raises():
    x = make((3,))
    y = x * 2.0
    loss = y.sum()
    loss.backward()
    assert y._parents == () and not y.is_leaf          # freed, and still not a leaf
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        loss.backward()
    np.testing.assert_array_equal(x.grad, 2.0)         # the failed call added nothing


def test_retain_graph_keeps_the_graph_for_a_second_backward():
    x = make((3,))
    loss = (x * 2.0).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_array_equal(x.grad, 4.0)         # accumulated twice
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_nodes_record_their_op():
    x = make((2, 3))
    y = (x * 2.0 + x).sum()
    assert y._op == "sum" and y._parents[0]._op == "add" and x._op is None


def test_float32_stays_float32_through_the_tape():
    x = make((2, 3), dtype=np.float32)
    y = ((x * 0.5 + 1.0) - x).mean()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


def test_flatten_matches_torch_semantics():
    x = make((2, 3, 4))
    assert x.flatten(0, 1).shape == (6, 4)
    assert x.flatten().shape == (24,)
    assert x.flatten(1).shape == (2, 12)


def test_two_leaves_never_share_a_gradient_array():
    # add hands the same dout to both parents: each leaf must own its own copy
    a, b = make((3,)), make((3,), seed=1)
    ((a + b) * 1.0).backward(np.ones(3))   # a fresh dout, handed by add to both
    assert not np.shares_memory(a.grad, b.grad)
    (a * 2.0).backward(np.ones(3))
    np.testing.assert_array_equal(a.grad, 3.0)
    np.testing.assert_array_equal(b.grad, 1.0)


def test_the_callers_gradient_is_never_owned_by_a_leaf():
    x = make((3,))
    upstream = np.ones(3)
    (x * 1.0).backward(upstream)       # mul's backward makes a new array: fine to own
    y = make((3,))
    y.backward(upstream)               # backward on a leaf: its grad must not alias the caller's array
    y.grad += 1.0
    np.testing.assert_array_equal(upstream, 1.0)


def test_a_fresh_gradient_is_owned_and_a_view_is_copied():
    w = make((4, 3))
    x = make((2, 3), seed=1)
    from numgpt.ops import concat, linear
    linear(x, w).backward(np.ones((2, 4)))
    assert w.grad.base is None and w.grad.flags.writeable   # the product's own array, kept without a copy
    parts = [make((2, 3), seed=i) for i in range(3)]
    concat(parts).backward(np.arange(18.0).reshape(6, 3))
    for part in parts:                                # split hands out views of one array: each leaf copies
        assert part.grad.base is None
    np.testing.assert_array_equal(parts[2].grad, np.arange(12.0, 18.0).reshape(2, 3))


def test_fan_out_sum_never_writes_into_an_array_someone_else_holds():
    # add's backward hands one array to both uses of x, and that array is the caller's gradient
    x = Tensor(np.ones(3), requires_grad=True)
    upstream = np.array([1.0, 2.0, 3.0])
    (x + x).backward(upstream)
    np.testing.assert_array_equal(x.grad, [2.0, 4.0, 6.0])
    np.testing.assert_array_equal(upstream, [1.0, 2.0, 3.0])


def test_fan_out_sum_of_a_tied_weight_equals_the_two_uses_apart():
    w = Tensor(np.random.default_rng(0).standard_normal((5, 3)), requires_grad=True)
    idx = np.array([[0, 2, 2, 4]])
    x = ops.embedding(idx, w)                                  # (1, 4, 3): w as a table
    logits = ops.linear(x, w)                                  # (1, 4, 5): w as the head
    dout = np.random.default_rng(1).standard_normal(logits.shape)
    logits.backward(dout)
    # by hand: the head's gradient dout^T x, plus the table's rows scattered from dout @ w
    head = dout.reshape(-1, 5).T @ w.data[idx[0]]
    table = np.zeros_like(w.data)
    np.add.at(table, idx[0], dout.reshape(-1, 5) @ w.data)
    np.testing.assert_allclose(w.grad, head + table, rtol=1e-12, atol=1e-12)
