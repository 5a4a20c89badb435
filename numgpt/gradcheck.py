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

Tolerances. An element passes when |analytic - numeric| <= atol + rtol |numeric|.
In float64 with h = 1e-6 the central difference errs by the round-off of the
two objectives, about 1e-16 |objective| / h, plus the truncation h^2 f''' / 6,
about 1e-12 relative. Measured on every case of ``numgpt gradcheck --list``
and the tiny model, on the reference pairs and on the numba twins alike
(``numgpt gradcheck --kernels numba`` prints these figures): the worst
absolute error is 5.9e-9 (dropout_add_layer_norm, whose objective is 40; the
other cases 1.6e-12 to 4.7e-9); the relative error is at most 8.8e-8 on
elements of 1e-2 and more, and reaches 3e-6 only on elements under 1e-3,
whose absolute error is as small as the rest. The float64 defaults
``FLOAT64_ATOL = FLOAT64_RTOL = 1e-6`` hold the worst element at 1/230 of its
tolerance, and fail a backward that is 0.1% off on any element larger than
1e-3: a wrong constant, which PyTorch's defaults
(``tolerance="torch"``: ``atol=1e-5, rtol=1e-3``, sized for float32-era
checks) let through.

Your backward of one of numgpt's ops (``check_case(name, backward=fn)``,
``numgpt gradcheck OP --backward``) is compared with numgpt's reference too,
on the same inputs and upstream gradient: two float64 computations of one
formula agree to round-off, ``ROUNDOFF_RTOL`` of the input's largest
gradient. A difference beyond that fails the check, whatever the tolerance
of the finite differences, naming the element, both values and their ratio,
even where finite differences alone would pass.
"""
import contextlib
from typing import Callable, NamedTuple, Optional

import numpy

from numgpt import backend, ops, registry
from numgpt.autograd import Tensor, no_grad
from numgpt.errors import UsageError
from numgpt.models.gpt import GPTModel
from numgpt.ops import fused
from numgpt.ops.rope import rope_frequencies, rope_tables

# float64 central differences: the measured noise (above) with a margin
FLOAT64_ATOL = 1e-6
FLOAT64_RTOL = 1e-6
# torch.autograd.gradcheck's defaults, for checks ported from PyTorch
TORCH_ATOL = 1e-5
TORCH_RTOL = 1e-3
TOLERANCES = {"float64": (FLOAT64_ATOL, FLOAT64_RTOL), "torch": (TORCH_ATOL, TORCH_RTOL)}
# one gradient computed twice in float64, in another order (a numba twin, your backward):
# |difference| / max |reference| over the input
ROUNDOFF_RTOL = 1e-9


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the numeric one."""


class InputReport(NamedTuple):
    """The worst element of one input."""
    name: str
    shape: tuple
    worst_abs_error: float      # max |analytic - numeric| over the input
    worst_rel_error: float      # max |analytic - numeric| / max(|analytic|, |numeric|), elements above atol
    worst_index: tuple          # where abs error / (atol + rtol |numeric|) is largest
    analytic: float             # the two values there
    numeric: float
    ok: bool


class ReferenceDifference(NamedTuple):
    """Your backward against numgpt's reference, element by element."""
    op: str
    ok: bool                    # every element within ROUNDOFF_RTOL of its input's largest reference gradient
    largest: float              # max over the inputs of max |yours - numgpt's| / max |numgpt's|
    input: Optional[str] = None     # the first element beyond round-off (inputs in order, C order), if any
    index: tuple = ()
    yours: float = 0.0
    numgpts: float = 0.0

    @property
    def ratio(self):
        return self.yours / self.numgpts if self.numgpts else float("inf")

    def describe(self):
        if self.ok and self.largest == 0:
            return f"equal to numgpt's {self.op}_backward on every element"
        if self.ok:
            return (f"within round-off of numgpt's {self.op}_backward (largest difference {self.largest:.1e} of "
                    f"the largest gradient; limit {ROUNDOFF_RTOL:.0e})")
        return (f"first differs from numgpt's {self.op}_backward at {self.input}{list(self.index)}: "
                f"yours {self.yours:.6e}, numgpt's {self.numgpts:.6e}, ratio {self.ratio:.6g}; largest "
                f"difference {self.largest:.1e} of the largest gradient, beyond float64 round-off "
                f"({ROUNDOFF_RTOL:.0e})")


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
    reference: Optional[ReferenceDifference] = None     # your backward against numgpt's (check_case)

    def describe(self):
        verdict = "ok" if self.ok else "FAILED"
        text = (f"{verdict}: worst abs error {self.worst_abs_error:.3e}, worst rel error {self.worst_rel_error:.3e} "
                f"(input {self.worst_input} at {self.worst_index}: analytic {self.analytic:.6e}, "
                f"numeric {self.numeric:.6e}; {self.checked} elements)")
        return text if self.reference is None else f"{text}; {self.reference.describe()}"


def resolve_tolerance(tolerance="float64", atol=None, rtol=None):
    """(atol, rtol) of the named tolerance (TOLERANCES), each overridden where given."""
    if tolerance not in TOLERANCES:
        raise UsageError(f"tolerance {tolerance!r}: expected one of {', '.join(TOLERANCES)}")
    default_atol, default_rtol = TOLERANCES[tolerance]
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)


def _numeric_gradient(objective, array, eps):
    """Central differences of ``objective()`` with respect to every element of
    ``array`` (perturbed in place, restored)."""
    numeric = numpy.empty(array.shape)
    for index in numpy.ndindex(array.shape):
        original = array[index]
        array[index] = original + eps
        plus = objective()
        array[index] = original - eps
        minus = objective()
        array[index] = original
        numeric[index] = (plus - minus) / (2 * eps)
    return numeric


def _input_report(name, grad, numeric, atol, rtol):
    """The input's report, and its worst error as a multiple of the tolerance."""
    if not grad.size:
        return InputReport(name, grad.shape, 0.0, 0.0, (), 0.0, 0.0, True), 0.0
    error = numpy.abs(grad - numeric)
    scale = numpy.maximum(numpy.abs(grad), numpy.abs(numeric))
    relative = numpy.divide(error, scale, out=numpy.zeros_like(error), where=scale > atol)
    scaled = error / (atol + rtol * numpy.abs(numeric))
    index = tuple(int(i) for i in numpy.unravel_index(int(numpy.argmax(scaled)), grad.shape))
    worst = float(scaled[index])
    return InputReport(name, grad.shape, float(error.max()), float(relative.max()), index, float(grad[index]),
                       float(numeric[index]), worst <= 1.0), worst


def _compare(objective, arrays, analytic, names, eps, atol, rtol):
    """Every element of ``analytic`` against the central difference of ``objective()``
    with respect to that element of ``arrays``."""
    reports, scaled = zip(*(_input_report(name, numpy.asarray(grad, dtype=numpy.float64),
                                          _numeric_gradient(objective, array, eps), atol, rtol)
                            for name, array, grad in zip(names, arrays, analytic)))
    n = int(numpy.argmax(scaled))
    worst = reports[n]
    return GradcheckResult(all(r.ok for r in reports), max(r.worst_abs_error for r in reports),
                           max(r.worst_rel_error for r in reports), n, worst.worst_index, worst.analytic,
                           worst.numeric, sum(a.size for a in arrays), tuple(reports))


def gradcheck(fn, inputs, eps=1e-6, atol=None, rtol=None, seed=0, raise_exception=True, names=None,
              tolerance="float64"):
    """Check ``fn(*inputs)``'s backward against central differences.

    ``inputs`` are Tensors; those with requires_grad (all float64) are checked,
    element by element, in place (restored afterwards). ``fn`` must be
    deterministic (dropout off, or reseeded inside). Passes when every element has
    |analytic - numeric| <= atol + rtol |numeric|, with the ``tolerance``'s atol and
    rtol: "float64" (FLOAT64_ATOL, FLOAT64_RTOL, from the measured noise) or "torch"
    (PyTorch's atol=1e-5, rtol=1e-3); an ``atol`` or ``rtol`` given replaces its own.
    """
    atol, rtol = resolve_tolerance(tolerance, atol, rtol)
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


def gradcheck_pair(forward, backward, *shapes, eps=1e-6, atol=None, rtol=None, seed=0, raise_exception=True,
                   names=None, tolerance="float64"):
    """Check a forward/backward pair written from scratch, on random float64 inputs of ``shapes``.

    ``forward(*xs) -> (out, cache)`` and ``backward(dout, cache) -> grads`` (one
    array per input, or one array for one input), the convention of numgpt's ops.
    Tolerances as in ``gradcheck``.
    """
    atol, rtol = resolve_tolerance(tolerance, atol, rtol)
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
    result = _compare(objective, arrays, grads, names, eps, atol, rtol)
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


def check_case(name, implementation="reference", backward=None, **tolerance):
    """Gradcheck of case ``name`` on numgpt's reference pair ('reference'), on its numba
    twin ('numba'), or with ``backward`` (your function) in place of the op's backward;
    ``tolerance``: gradcheck's keywords (tolerance="torch", atol=, rtol=).

    With ``backward``, the result's ``reference`` compares your gradients with the
    reference's, and the check fails where they differ beyond float64 round-off
    (ROUNDOFF_RTOL), whatever the tolerance of the finite differences."""
    case = op_cases()[name]
    if backward is not None:
        if case.op is None:
            raise UsageError(f"case {name!r} exercises the autograd itself, not an op with a backward to replace")
        context = registry.use_backward(case.op, backward)
    else:
        context = kernel_mode("numpy" if implementation == "reference" else "numba")
    with context:
        result = gradcheck(case.fn, case_inputs(case.shapes), raise_exception=False, names=case.names, **tolerance)
    if backward is None:
        return result
    reference = reference_difference(name, backward)
    return result._replace(ok=result.ok and reference.ok, reference=reference)


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


def reference_difference(name, backward):
    """``backward``'s gradients for case ``name`` against numgpt's reference pair's, on the
    same inputs and upstream gradient: an element differs where |yours - numgpt's| exceeds
    ROUNDOFF_RTOL times the largest |numgpt's| of its input. Names the first that does
    (inputs in order, elements in C order)."""
    case = op_cases()[name]
    _, theirs = analytic_gradients(name, backward=backward)
    _, ours = analytic_gradients(name)
    largest, first = 0.0, None
    for input_name, mine, reference in zip(case.names, theirs, ours):
        mine = numpy.zeros_like(reference) if mine is None else mine
        difference = numpy.abs(mine - reference)
        scale = float(numpy.abs(reference).max())
        differs = difference > ROUNDOFF_RTOL * scale
        if scale:
            largest = max(largest, float(difference.max()) / scale)
        elif differs.any():                     # numgpt's gradient is 0 everywhere, yours is not
            largest = float("inf")
        if first is None and differs.any():
            index = tuple(int(i) for i in numpy.argwhere(differs)[0])
            first = (input_name, index, float(mine[index]), float(reference[index]))
    if first is None:
        return ReferenceDifference(case.op, True, largest)
    return ReferenceDifference(case.op, False, largest, *first)


TINY_MODEL = {"vocab_size": 7, "context_length": 4, "emb_dim": 4, "n_heads": 2, "n_layers": 2,
              "drop_rate": 0.0, "qkv_bias": True}


def check_model(cfg=None, **tolerance):
    """Every parameter of a tiny GPTModel (float64, dropout off) against central differences."""
    backend.manual_seed(3)
    cfg = dict(TINY_MODEL if cfg is None else cfg)
    model = GPTModel(cfg).to(dtype=numpy.float64).eval()
    idx = numpy.random.default_rng(0).integers(0, cfg["vocab_size"], size=(2, cfg["context_length"]))
    names = [name for name, _ in model.named_parameters()]
    return gradcheck(lambda *_: model(idx), model.parameters(), raise_exception=False, names=names, **tolerance)
