"""gradcheck's verdict fits float64: the slips a learner makes by hand (a
constant 0.1% off, a small offset, two elements swapped, a term left out)
fail, for LayerNorm, GELU and cross-entropy, against finite differences at
the float64 tolerances and against numgpt's reference at round-off; a
correct backward in another arithmetic order passes; PyTorch's looser
tolerances stay available and never excuse a difference from numgpt's."""
import subprocess
import sys

import numpy as np
import pytest

import numgpt
from cli_process import ENV, assert_usage_error, numgpt_cli
from numgpt.cli import load_function, main
from numgpt.gradcheck import ROUNDOFF_RTOL, TOLERANCES, check_case, resolve_tolerance

# The learner's files: each op's backward with four slips, and one right answer in its own arithmetic.
# The three mechanical slips wrap numgpt's backward; the missing term is the formula written out without it.
SLIPS = '''
from numgpt.ops.{op} import {op}_backward as numgpt_backward


def first_of(grads):
    return (grads, ()) if not isinstance(grads, tuple) else (grads[0], grads[1:])


def join(first, rest):
    return (first, *rest) if rest else first


def times_1_001(dout, cache):
    first, rest = first_of(numgpt_backward(dout, cache))
    return join(first * 1.001, rest)


def plus_1e_4(dout, cache):
    first, rest = first_of(numgpt_backward(dout, cache))
    return join(first + 1e-4, rest)


def swapped(dout, cache):
    first, rest = first_of(numgpt_backward(dout, cache))
    first = first.copy()
    first.flat[0], first.flat[1] = first.flat[1], first.flat[0]
    return join(first, rest)
'''

LAYER_NORM = SLIPS.format(op="layer_norm") + '''

def missing_term(dout, cache):              # dx without - mean(dxhat)
    x, weight, mean, rstd = cache
    xhat = (x - mean) * rstd
    dxhat = dout * weight
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, (dout * xhat).sum(axis=(0, 1)), dout.sum(axis=(0, 1))


def right(dout, cache):                     # the chain rule step by step: through xc, var and mean
    x, weight, mean, rstd = cache
    C = x.shape[-1]
    xc = x - mean
    dxhat = dout * weight
    dvar = (dxhat * xc).sum(axis=-1, keepdims=True) * -0.5 * rstd ** 3
    dxc = dxhat * rstd + dvar * 2 * xc / C
    dx = dxc - dxc.mean(axis=-1, keepdims=True)
    return dx, (dout * xc * rstd).sum(axis=(0, 1)), dout.sum(axis=(0, 1))
'''

GELU = SLIPS.format(op="gelu") + '''
import math

import numpy as np

C, K = math.sqrt(2 / math.pi), 0.044715


def missing_term(dout, x):                  # du/dx = c, without the cubic's 3 k x^2
    t = np.tanh(C * (x + K * x ** 3))
    return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * C)


def right(dout, x):                         # d tanh(u)/du as sech(u)^2 = 1 / cosh(u)^2
    u = C * (x + K * x ** 3)
    return dout * (0.5 * (1 + np.tanh(u)) + 0.5 * x / np.cosh(u) ** 2 * C * (1 + 3 * K * x ** 2))
'''

CROSS_ENTROPY = SLIPS.format(op="cross_entropy") + '''
import numpy as np


def missing_term(dout, cache):              # softmax(z) / N, without - one_hot(target)
    probs, targets, valid, n_valid = cache
    return probs * (valid * dout / n_valid)[:, None]


def right(dout, cache):                     # the one-hot built whole, each term scaled apart
    probs, targets, valid, n_valid = cache
    one_hot = np.eye(probs.shape[1])[targets]
    scale = valid[:, None] * dout / n_valid
    return probs * scale - one_hot * scale
'''

LEARNER_FILES = {"layer_norm": LAYER_NORM, "gelu": GELU, "cross_entropy": CROSS_ENTROPY}
SLIP_NAMES = ("times_1_001", "plus_1e_4", "swapped", "missing_term")


@pytest.fixture(scope="module")
def learner_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("learner")
    for op, source in LEARNER_FILES.items():
        (directory / f"my_{op}.py").write_text(source)
    return directory


def learner_spec(directory, op, name):
    return f"{directory / f'my_{op}.py'}:{name}"


def learner_backward(directory, op, name):
    return load_function(learner_spec(directory, op, name))          # as `numgpt gradcheck --backward` loads it


@pytest.mark.parametrize("slip", SLIP_NAMES)
@pytest.mark.parametrize("op", LEARNER_FILES)
def test_a_slip_fails_against_finite_differences_and_against_numgpt(learner_dir, op, slip):
    result = check_case(op, backward=learner_backward(learner_dir, op, slip))
    print(op, slip, result.describe())
    assert not result.ok
    assert not all(report.ok for report in result.inputs)          # finite differences alone, at float64
    reference = result.reference
    assert not reference.ok and reference.largest > ROUNDOFF_RTOL
    assert reference.input == result.inputs[0].name                # the slip is in the first gradient
    assert reference.yours != reference.numgpts


@pytest.mark.parametrize("op", LEARNER_FILES)
def test_a_right_backward_in_another_order_passes_within_round_off(learner_dir, op):
    result = check_case(op, backward=learner_backward(learner_dir, op, "right"))
    print(op, result.describe())
    assert result.ok and result.reference.ok
    assert 0 < result.reference.largest <= ROUNDOFF_RTOL / 1000    # another order: not the same bits, far within


@pytest.mark.parametrize("op", LEARNER_FILES)
def test_torch_tolerance_passes_the_slip_by_finite_differences_but_never_against_numgpt(learner_dir, op):
    slip = learner_backward(learner_dir, op, "times_1_001")
    result = check_case(op, backward=slip, tolerance="torch")
    print(op, result.describe())
    assert all(report.ok for report in result.inputs)              # the finding: 0.1% hides in 1e-3
    assert not result.reference.ok and not result.ok
    assert abs(result.reference.ratio - 1.001) < 1e-9              # the ratio names the slip


def test_the_first_difference_names_the_element_both_values_and_the_ratio(learner_dir):
    result = check_case("layer_norm", backward=learner_backward(learner_dir, "layer_norm", "times_1_001"))
    reference = result.reference
    assert (reference.input, reference.index) == ("x", (0, 0, 0))
    assert abs(reference.yours / 1.001 - reference.numgpts) < 1e-15
    text = reference.describe()
    print(text)
    assert "at x[0, 0, 0]" in text and f"yours {reference.yours:.6e}" in text
    assert f"numgpt's {reference.numgpts:.6e}" in text and "ratio 1.001" in text


def test_the_float64_tolerance_is_the_default_and_torch_is_pytorchs():
    assert TOLERANCES == {"float64": (1e-6, 1e-6), "torch": (1e-5, 1e-3)}
    assert resolve_tolerance() == (1e-6, 1e-6) and resolve_tolerance("torch", rtol=1e-4) == (1e-5, 1e-4)
    with pytest.raises(numgpt.UsageError, match="tolerance 'loose': expected one of float64, torch"):
        resolve_tolerance("loose")


def test_python_api_takes_the_tolerance_by_name_or_by_value():
    rng = np.random.default_rng(0)
    x = numgpt.Tensor(rng.standard_normal((3, 4)), requires_grad=True)

    def square_with_a_slip(t):                  # 2 x, written 2.002 x: a wrong constant
        return numgpt.autograd.record(t.data ** 2, (t,), lambda dout: (2.002 * t.data * dout,))

    strict = numgpt.gradcheck(square_with_a_slip, [x], raise_exception=False)
    loose = numgpt.gradcheck(square_with_a_slip, [x], raise_exception=False, tolerance="torch")
    by_value = numgpt.gradcheck(square_with_a_slip, [x], raise_exception=False, atol=1e-5, rtol=1e-3)
    print(strict.describe(), loose.describe(), sep="\n")
    assert not strict.ok and loose.ok and by_value.ok
    with pytest.raises(numgpt.GradcheckError, match="FAILED"):
        numgpt.gradcheck_pair(lambda a: (a * a, a), lambda dout, a: 2.002 * a * dout, (3, 4))
    assert numgpt.gradcheck_pair(lambda a: (a * a, a), lambda dout, a: 2.002 * a * dout, (3, 4), tolerance="torch").ok


@pytest.mark.parametrize("tolerance", ["float64", "torch"])
def test_cli_fails_the_slip_under_either_tolerance(learner_dir, capsys, tolerance):
    code = main(["gradcheck", "layer_norm", "--backward", learner_spec(learner_dir, "layer_norm", "times_1_001"),
                 "--tolerance", tolerance])
    out = capsys.readouterr().out
    print(out)
    assert code == 1 and out.strip().endswith("FAILED")
    assert f"tolerance {tolerance}: |analytic - numeric| <= " in out
    assert "first differs from numgpt's layer_norm_backward at x[0, 0, 0]" in out and "ratio 1.001" in out
    assert ("finite differences alone pass at tolerance torch" in out) == (tolerance == "torch")


def test_cli_passes_a_right_backward(learner_dir, capsys):
    assert main(["gradcheck", "gelu", "--backward", learner_spec(learner_dir, "gelu", "right")]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "within round-off of numgpt's gelu_backward" in out and out.strip().endswith("ok")


def test_the_real_command_exits_1_on_the_slip_and_2_on_an_unknown_tolerance(learner_dir):
    # the command: a module of yours in the current directory, its backward 0.1% off
    result = subprocess.run([sys.executable, "-m", "numgpt", "gradcheck", "layer_norm", "--backward",
                             "my_layer_norm:times_1_001", "--tolerance", "torch"], capture_output=True, text=True,
                            cwd=learner_dir, env=ENV, timeout=300)
    print(result.stdout, result.stderr)
    assert result.returncode == 1 and result.stdout.strip().endswith("FAILED") and "ratio 1.001" in result.stdout
    assert_usage_error(numgpt_cli("gradcheck", "layer_norm", "--tolerance", "loose"), "--tolerance", "loose",
                       "float64", "torch")
