"""A numeric gradient checker in float64.

The function may return a tensor of any shape: the check draws a random
upstream gradient ``dout`` and compares, for every element x_i of every input
that requires grad, the analytic d(sum(f * dout))/dx_i from ``backward`` with
the central difference (sum(f(x + h) dout) - sum(f(x - h) dout)) / 2h.
A plain ``.sum()`` would hide errors such as a softmax backward that forgets
the sum term; the random ``dout`` does not.
"""
from typing import NamedTuple

import numpy

from numgpt.autograd import no_grad


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the numeric one."""


class GradcheckResult(NamedTuple):
    ok: bool
    worst_abs_error: float      # max |analytic - numeric|
    worst_rel_error: float      # max |analytic - numeric| / max(|analytic|, |numeric|), over elements not both ~0
    worst_input: int            # which input holds the worst element (by tolerance used)
    worst_index: tuple          # its index
    analytic: float
    numeric: float
    checked: int                # how many elements were checked

    def describe(self):
        verdict = "ok" if self.ok else "FAILED"
        return (f"{verdict}: worst abs error {self.worst_abs_error:.3e}, worst rel error {self.worst_rel_error:.3e} "
                f"(input {self.worst_input} at {self.worst_index}: analytic {self.analytic:.6e}, "
                f"numeric {self.numeric:.6e}; {self.checked} elements)")


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):
    """Check ``fn(*inputs)``'s backward against central differences.

    ``inputs`` are Tensors; those with requires_grad (all float64) are checked,
    element by element, in place (restored afterwards). ``fn`` must be
    deterministic (dropout off). Passes when every element has
    |analytic - numeric| <= atol + rtol |numeric|.
    """
    inputs = list(inputs)
    checked = [t for t in inputs if t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for i, t in enumerate(checked):
        if t.dtype != numpy.float64:
            raise TypeError(f"gradcheck needs float64 inputs; input {i} is {t.dtype} (model.to(dtype=numpy.float64))")

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

    worst = (-1.0, 0.0, 0.0, 0, (), 0.0, 0.0)   # (scaled error, abs, rel, input, index, analytic, numeric)
    count = 0
    for n, (t, grad) in enumerate(zip(checked, analytic)):
        for index in numpy.ndindex(t.shape):
            original = t.data[index]
            t.data[index] = original + eps
            plus = objective()
            t.data[index] = original - eps
            minus = objective()
            t.data[index] = original
            numeric = (plus - minus) / (2 * eps)
            a = float(grad[index])
            abs_err = abs(a - numeric)
            scale = max(abs(a), abs(numeric))
            rel_err = abs_err / scale if scale > atol else 0.0
            scaled = abs_err / (atol + rtol * abs(numeric))
            count += 1
            if scaled > worst[0]:
                worst = (scaled, abs_err, rel_err, n, index, a, numeric)
            else:
                worst = (worst[0], max(worst[1], abs_err), max(worst[2], rel_err)) + worst[3:]
    result = GradcheckResult(worst[0] <= 1.0, worst[1], worst[2], worst[3], worst[4], worst[5], worst[6], count)
    if raise_exception and not result.ok:
        raise GradcheckError(result.describe())
    return result


# ---------------------------------------------------------------- the op suite
# Each case: a function of float64 tensors and the shapes of its inputs, small
# enough that central differences over every element take milliseconds.
_IDX = numpy.array([[0, 3, 3, 1], [4, 0, 2, 3]])          # repeats: the embedding backward must add
_TARGETS = numpy.array([1, 0, -100, 4, 2, 2])             # one ignored target


def _seeded(fn):
    """fn with numgpt's generator reset first: dropout draws the same mask on every call."""
    from numgpt.backend import manual_seed

    def call(*args):
        manual_seed(7)
        return fn(*args)
    return call


def op_cases():
    """name -> (function of tensors, input shapes): one case per op numgpt differentiates."""
    from numgpt import ops
    return {
        "linear": (lambda x, w, b: ops.linear(x, w, b), [(2, 3, 4), (5, 4), (5,)]),
        "linear_nobias": (lambda x, w: ops.linear(x, w), [(3, 4), (2, 4)]),
        "embedding": (lambda w: ops.embedding(_IDX, w), [(5, 3)]),
        "layer_norm": (lambda x, w, b: ops.layer_norm(x, w, b), [(2, 3, 6), (6,), (6,)]),
        "gelu": (ops.gelu, [(3, 7)]),
        "dropout": (_seeded(lambda x: ops.dropout(x, 0.4, training=True)), [(4, 5)]),
        "attention": (lambda qkv: ops.causal_attention(qkv, 2), [(2, 5, 12)]),
        "attention_dropout": (_seeded(lambda qkv: ops.causal_attention(qkv, 2, 0.3, training=True)),
                              [(2, 5, 12)]),
        "cross_entropy": (lambda z: ops.cross_entropy(z, _TARGETS), [(6, 5)]),
        "add_broadcast": (lambda a, b: a + b, [(2, 3, 4), (3, 4)]),
        "mul_broadcast": (lambda a, b: a * b, [(2, 3, 4), (1, 4)]),
        "reshape_transpose": (lambda x: x.reshape(3, 2, 4).transpose(0, 2) * 1.5, [(6, 4)]),
        "getitem": (lambda x: x[:, -1, :], [(2, 3, 4)]),
        "concat": (lambda a, b: ops.concat([a, b]), [(2, 3), (4, 3)]),
        "mean": (lambda x: x.mean(), [(3, 4)]),
    }


def case_inputs(shapes, dtype=numpy.float64):
    """Random inputs that require grad, one per shape (seeded by position)."""
    from numgpt.autograd import Tensor
    return [Tensor(numpy.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=True)
            for seed, shape in enumerate(shapes)]


def check_op(name, **tolerances):
    fn, shapes = op_cases()[name]
    return gradcheck(fn, case_inputs(shapes), raise_exception=False, **tolerances)


TINY_MODEL = {"vocab_size": 7, "context_length": 4, "emb_dim": 4, "n_heads": 2, "n_layers": 2,
              "drop_rate": 0.0, "qkv_bias": True}


def check_model(cfg=None, **tolerances):
    """Every parameter of a tiny GPTModel (float64, dropout off) against central differences."""
    from numgpt.backend import manual_seed
    from numgpt.model import GPTModel
    manual_seed(3)
    cfg = dict(TINY_MODEL if cfg is None else cfg)
    model = GPTModel(cfg).to(dtype=numpy.float64).eval()
    idx = numpy.random.default_rng(0).integers(0, cfg["vocab_size"], size=(2, cfg["context_length"]))
    return gradcheck(lambda *_: model(idx), model.parameters(), raise_exception=False, **tolerances)
