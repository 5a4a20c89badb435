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
