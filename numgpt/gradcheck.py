"""A numeric gradient checker in float64.

The function may return a tensor of any shape: the check draws a random
upstream gradient ``dout`` and compares, for every element x_i of every input
that requires grad, the analytic d(sum(f * dout))/dx_i from ``backward`` with
the central difference (sum(f(x + h) dout) - sum(f(x - h) dout)) / 2h: the
vector-Jacobian product that the backward computes, checked one input
element at a time (cs231n's numeric check). A plain ``.sum()`` would hide
errors such as a softmax backward that forgets the sum term; the random
``dout`` does not.

- ``gradcheck(fn, tensors)`` checks whatever the tape records for ``fn``.
- ``gradcheck_pair(forward, backward, *shapes)`` checks a pair of plain
  functions on arrays, ``forward(*xs) -> (out, cache)`` and
  ``backward(dout, cache) -> grads``: numgpt's own, or yours.
- ``op_cases()`` is numgpt's suite, one small case per op, and ``check_case``
  runs one on the reference pair, on its numba twin or on your backward
  (``numgpt gradcheck``).
"""
import contextlib
from typing import Callable, NamedTuple, Optional

import numpy

from numgpt import backend, registry
from numgpt.autograd import Tensor, no_grad
from numgpt.errors import UsageError


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the numeric one."""


class InputReport(NamedTuple):
    """The worst element of one input."""
    name: str
    shape: tuple
    worst_abs_error: float      # max |analytic - numeric| over the input
    worst_rel_error: float      # max |analytic - numeric| / max(|analytic|, |numeric|), elements not both ~0
    worst_index: tuple          # where abs error / (atol + rtol |numeric|) is largest
    analytic: float             # the two values there
    numeric: float
    ok: bool


class GradcheckResult(NamedTuple):
    ok: bool
    worst_abs_error: float
    worst_rel_error: float
    worst_input: int            # which input holds the worst element (by tolerance used)
    worst_index: tuple          # its index
    analytic: float
    numeric: float
    checked: int                # how many elements were checked
    inputs: tuple = ()          # one InputReport per checked input

    def describe(self):
        verdict = "ok" if self.ok else "FAILED"
        return (f"{verdict}: worst abs error {self.worst_abs_error:.3e}, worst rel error {self.worst_rel_error:.3e} "
                f"(input {self.worst_input} at {self.worst_index}: analytic {self.analytic:.6e}, "
                f"numeric {self.numeric:.6e}; {self.checked} elements)")


def _compare(objective, arrays, analytic, names, eps, atol, rtol):
    """Central differences of ``objective()`` with respect to every element of
    ``arrays`` (perturbed in place, restored), against ``analytic``."""
    reports, count = [], 0
    for name, array, grad in zip(names, arrays, analytic):
        worst = (-1.0, 0.0, 0.0, (), 0.0, 0.0)     # (scaled error, abs, rel, index, analytic, numeric)
        for index in numpy.ndindex(array.shape):
            original = array[index]
            array[index] = original + eps
            plus = objective()
            array[index] = original - eps
            minus = objective()
            array[index] = original
            numeric = (plus - minus) / (2 * eps)
            a = float(grad[index])
            abs_err = abs(a - numeric)
            scale = max(abs(a), abs(numeric))
            rel_err = abs_err / scale if scale > atol else 0.0
            scaled = abs_err / (atol + rtol * abs(numeric))
            count += 1
            if scaled > worst[0]:
                worst = (scaled, max(worst[1], abs_err), max(worst[2], rel_err), index, a, numeric)
            else:
                worst = (worst[0], max(worst[1], abs_err), max(worst[2], rel_err)) + worst[3:]
        reports.append(InputReport(name, array.shape, worst[1], worst[2], worst[3], worst[4], worst[5],
                                   worst[0] <= 1.0))
    scaled_worst = [abs(r.analytic - r.numeric) / (atol + rtol * abs(r.numeric)) for r in reports]
    n = int(numpy.argmax(scaled_worst))
    worst = reports[n]
    return GradcheckResult(all(r.ok for r in reports), max(r.worst_abs_error for r in reports),
                           max(r.worst_rel_error for r in reports), n, worst.worst_index, worst.analytic,
                           worst.numeric, count, tuple(reports))


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True, names=None):
    """Check ``fn(*inputs)``'s backward against central differences.

    ``inputs`` are Tensors; those with requires_grad (all float64) are checked,
    element by element, in place (restored afterwards). ``fn`` must be
    deterministic (dropout off, or reseeded inside). Passes when every element has
    |analytic - numeric| <= atol + rtol |numeric|.
    """
    inputs = list(inputs)
    checked = [t for t in inputs if t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for i, t in enumerate(checked):
        if t.dtype != numpy.float64:
            raise TypeError(f"gradcheck needs float64 inputs; input {i} is {t.dtype} (model.to(dtype=numpy.float64))")
    names = names or [f"input {i}" for i in range(len(checked))]

    out = fn(*inputs)
    dout = numpy.random.default_rng(seed).standard_normal(out.shape)
    saved = [t.grad for t in checked]
    for t in checked:
        t.grad = None
    out.backward(dout)
    analytic = [numpy.zeros_like(t.data) if t.grad is None else t.grad.copy() for t in checked]
    for t, grad in zip(checked, saved):
        t.grad = grad

    def objective():
        with no_grad():
            return float(numpy.sum(fn(*inputs).data * dout))

    result = _compare(objective, [t.data for t in checked], analytic, names, eps, atol, rtol)
    if raise_exception and not result.ok:
        raise GradcheckError(result.describe())
    return result


def gradcheck_pair(forward, backward, *shapes, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True,
                   names=None):
    """Check a forward/backward pair written from scratch, on random float64 inputs of ``shapes``.

    ``forward(*xs) -> (out, cache)`` and ``backward(dout, cache) -> grads`` (one
    array per input, or one array for one input), the convention of numgpt's ops.
    """
    rng = numpy.random.default_rng(seed)
    arrays = [rng.standard_normal(shape) for shape in shapes]
    out, cache = forward(*arrays)
    dout = rng.standard_normal(numpy.shape(out))
    grads = backward(dout, cache)
    grads = (grads,) if isinstance(grads, numpy.ndarray) else tuple(grads)
    if len(grads) != len(arrays):
        raise UsageError(f"backward returned {len(grads)} gradients for {len(arrays)} inputs")
    for i, (grad, array) in enumerate(zip(grads, arrays)):
        if numpy.shape(grad) != array.shape:
            raise UsageError(f"backward's gradient {i} has shape {numpy.shape(grad)}, its input {array.shape}")

    def objective():
        return float(numpy.sum(forward(*arrays)[0] * dout))

    names = names or [f"input {i}" for i in range(len(arrays))]
    result = _compare(objective, arrays, [numpy.asarray(g, dtype=numpy.float64) for g in grads], names,
                      eps, atol, rtol)
    if raise_exception and not result.ok:
        raise GradcheckError(result.describe())
    return result


# ---------------------------------------------------------------- the op suite
# Each case: a function of float64 tensors, the names and shapes of its inputs,
# small enough that central differences over every element take milliseconds.
_IDX = numpy.array([[0, 3, 3, 1], [4, 0, 2, 3]])          # repeats: the embedding backward must add
_TARGETS = numpy.array([1, 0, -100, 4, 2, 2])             # one ignored target


def _rope_tables(T, D):
    """cos, sin (T, D/2) of positions 3 .. 3 + T - 1 with Llama 3's scaling (all three bands at D = 8)."""
    from numgpt.ops.rope import rope_frequencies, rope_tables
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    return rope_tables(rope_frequencies(D, 500000.0, scaling), 3, T, numpy.float64)


_COS, _SIN = _rope_tables(3, 8)


class Case(NamedTuple):
    op: Optional[str]           # the registry op whose reference pair it exercises (None: the autograd's own)
    fn: Callable
    names: tuple
    shapes: tuple
    fused: Optional[Callable] = None    # a fused op's reference forward (numgpt/ops/fused.py); op is then None


def _seeded(fn):
    """fn with numgpt's generator reset first: dropout draws the same mask on every call."""
    def call(*args):
        backend.manual_seed(7)
        return fn(*args)
    return call


def op_cases():
    """case name -> Case: one case per op numgpt differentiates (and the autograd's own ops)."""
    from numgpt import ops
    from numgpt.ops import fused
    return {
        "linear": Case("linear", lambda x, w, b: ops.linear(x, w, b), ("x", "weight", "bias"),
                       ((2, 3, 4), (5, 4), (5,))),
        "linear_nobias": Case("linear", lambda x, w: ops.linear(x, w), ("x", "weight"), ((3, 4), (2, 4))),
        "embedding": Case("embedding", lambda w: ops.embedding(_IDX, w), ("weight",), ((5, 3),)),
        "layer_norm": Case("layer_norm", lambda x, w, b: ops.layer_norm(x, w, b), ("x", "weight", "bias"),
                           ((2, 3, 6), (6,), (6,))),
        "gelu": Case("gelu", ops.gelu, ("x",), ((3, 7),)),
        "dropout": Case("dropout", _seeded(lambda x: ops.dropout(x, 0.4, training=True)), ("x",), ((4, 5),)),
        "attention": Case("attention", lambda q, k, v: ops.causal_attention(q, k, v, 2), ("q", "k", "v"),
                          ((2, 5, 4),) * 3),
        "attention_dropout": Case("attention",
                                  _seeded(lambda q, k, v: ops.causal_attention(q, k, v, 2, 0.3, training=True)),
                                  ("q", "k", "v"), ((2, 5, 4),) * 3),
        "grouped_query_attention": Case("attention", lambda q, k, v: ops.causal_attention(q, k, v, 4, n_kv_heads=2),
                                        ("q", "k", "v"), ((2, 5, 8), (2, 5, 4), (2, 5, 4))),
        "cross_entropy": Case("cross_entropy", lambda z: ops.cross_entropy(z, _TARGETS), ("logits",), ((6, 5),)),
        "rms_norm": Case("rms_norm", lambda x, w: ops.rms_norm(x, w), ("x", "weight"), ((2, 3, 6), (6,))),
        "rms_norm_heads": Case("rms_norm", lambda x, w: ops.rms_norm(x, w, 1e-5), ("x", "weight"),
                               ((2, 3, 2, 4), (4,))),
        "rope": Case("rope", lambda x: ops.rope(x, _COS, _SIN), ("x",), ((2, 3, 2, 8),)),
        "swiglu": Case("swiglu", ops.swiglu, ("gate", "up"), ((3, 7), (3, 7))),
        "swiglu_linear": Case("swiglu_linear", ops.swiglu_linear, ("gate", "up", "weight", "bias"),
                              ((2, 3, 7), (2, 3, 7), (4, 7), (4,))),
        "linear_gelu": Case(None, ops.linear_gelu, ("x", "weight", "bias"), ((2, 3, 4), (5, 4), (5,)),
                            fused.linear_gelu_forward),
        "dropout_add": Case(None, _seeded(lambda x, y: ops.dropout_add(x, y, 0.4, training=True)), ("x", "y"),
                            ((4, 5),) * 2, fused.dropout_add_forward),
        "dropout_add_layer_norm": Case(None, _seeded(lambda x, y, w, b: ops.concat(
            list(ops.dropout_add_layer_norm(x, y, 0.4, True, w, b)))), ("x", "y", "weight", "bias"),
            ((2, 3, 6), (2, 3, 6), (6,), (6,)), fused.dropout_add_layer_norm_forward),
        "add_broadcast": Case("add", lambda a, b: a + b, ("a", "b"), ((2, 3, 4), (3, 4))),
        "mul_broadcast": Case("mul", lambda a, b: a * b, ("a", "b"), ((2, 3, 4), (1, 4))),
        "reshape_transpose": Case(None, lambda x: x.reshape(3, 2, 4).transpose(0, 2) * 1.5, ("x",), ((6, 4),)),
        "getitem": Case(None, lambda x: x[:, -1, :], ("x",), ((2, 3, 4),)),
        "concat": Case(None, lambda a, b: ops.concat([a, b]), ("a", "b"), ((2, 3), (4, 3))),
        "mean": Case(None, lambda x: x.mean(), ("x",), ((3, 4),)),
    }


def case_inputs(shapes, dtype=numpy.float64):
    """Random inputs that require grad, one per shape (seeded by position)."""
    return [Tensor(numpy.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=True)
            for seed, shape in enumerate(shapes)]


@contextlib.contextmanager
def kernel_mode(mode):
    """Run the block in kernel mode ``mode`` ('numpy': the references; 'numba': the twins)."""
    previous = backend.get_kernel_mode()
    backend.set_kernel_mode(mode)
    try:
        yield
    finally:
        backend.set_kernel_mode(previous)


def check_case(name, implementation="reference", backward=None, **tolerances):
    """Gradcheck of case ``name`` on numgpt's reference pair ('reference'), on its numba
    twin ('numba'), or with ``backward`` (your function) in place of the op's backward."""
    case = op_cases()[name]
    if backward is not None:
        if case.op is None:
            raise UsageError(f"case {name!r} exercises the autograd itself, not an op with a backward to replace")
        context = registry.use_backward(case.op, backward)
    else:
        context = kernel_mode("numpy" if implementation == "reference" else "numba")
    with context:
        return gradcheck(case.fn, case_inputs(case.shapes), raise_exception=False, names=case.names, **tolerances)


def analytic_gradients(name, implementation="reference", backward=None):
    """(output, [gradient per input]) of case ``name`` for one upstream gradient, as
    ``check_case`` would compute them (for comparing two implementations)."""
    case = op_cases()[name]
    context = (registry.use_backward(case.op, backward) if backward is not None
               else kernel_mode("numpy" if implementation == "reference" else "numba"))
    with context:
        inputs = case_inputs(case.shapes)
        out = case.fn(*inputs)
        out.backward(numpy.random.default_rng(0).standard_normal(out.shape))
        return out.data, [t.grad for t in inputs]


def first_difference(name, backward, atol=1e-7, rtol=1e-5):
    """Where ``backward``'s gradients for case ``name`` first differ from numgpt's reference
    (inputs in order, elements in C order): (input name, index, yours, numgpt's), or None."""
    case = op_cases()[name]
    _, theirs = analytic_gradients(name, backward=backward)
    _, ours = analytic_gradients(name)
    for input_name, mine, reference in zip(case.names, theirs, ours):
        mine = numpy.zeros_like(reference) if mine is None else mine
        differs = numpy.abs(mine - reference) > atol + rtol * numpy.abs(reference)
        if differs.any():
            index = tuple(int(i) for i in numpy.argwhere(differs)[0])
            return input_name, index, float(mine[index]), float(reference[index])
    return None


TINY_MODEL = {"vocab_size": 7, "context_length": 4, "emb_dim": 4, "n_heads": 2, "n_layers": 2,
              "drop_rate": 0.0, "qkv_bias": True}


def check_model(cfg=None, **tolerances):
    """Every parameter of a tiny GPTModel (float64, dropout off) against central differences."""
    from numgpt.model import GPTModel
    backend.manual_seed(3)
    cfg = dict(TINY_MODEL if cfg is None else cfg)
    model = GPTModel(cfg).to(dtype=numpy.float64).eval()
    idx = numpy.random.default_rng(0).integers(0, cfg["vocab_size"], size=(2, cfg["context_length"]))
    names = [name for name, _ in model.named_parameters()]
    return gradcheck(lambda *_: model(idx), model.parameters(), raise_exception=False, names=names, **tolerances)
