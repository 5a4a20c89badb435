"""numgpt gradcheck: float64 central differences of each op's backward (and its numba twin),
of a tiny model, or of your own backward of one op.
"""
import numpy as np

from numgpt.cli import arguments
from numgpt.cli.common import load_function
from numgpt.errors import UsageError
from numgpt.gradcheck import (ROUNDOFF_RTOL, TOLERANCES, analytic_gradients, check_case, check_model, kernel_mode,
                              op_cases)
from numgpt.registry import fused_twins, numba_twins, op_pairs


GRADCHECK_NAME_WIDTH = 24     # the column of case names: the longest, grouped_query_attention, and a space


def _gradcheck_line(name, label, result):
    verdict = "ok    " if result.ok else "FAILED"
    return (f"{name:<{GRADCHECK_NAME_WIDTH}} {label:<11} {verdict} worst rel error {result.worst_rel_error:.2e} "
            f"(abs {result.worst_abs_error:.2e}, {result.checked} elements)")


def _twin_difference(name):
    """The largest difference of the numba twin's output and gradients from the reference's, relative."""
    reference = analytic_gradients(name, "reference")
    twin = analytic_gradients(name, "numba")
    pairs = [(reference[0], twin[0])] + list(zip(reference[1], twin[1]))
    return max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300)) for a, b in pairs)


def _has_twin(case):
    if case.fused is not None:
        return case.fused in fused_twins()
    return case.op is not None and any(fn in numba_twins() for fn in op_pairs()[case.op])


def _tolerance_words(tolerance):
    atol, rtol = TOLERANCES[tolerance]
    return f"tolerance {tolerance}: |analytic - numeric| <= {atol:.0e} + {rtol:.0e} |numeric|"


def cmd_gradcheck(args):
    # a numba twin computes in float64 what its reference computes, in another order: round-off apart
    cases = op_cases()
    if args.list:
        for name, case in cases.items():
            pair = op_pairs()[case.op] if case.op else None
            if case.fused is not None:
                where = f"{case.fused.__module__}: {case.fused.__name__}, its parts op by op"
            elif pair:
                where = f"{pair.forward.__module__}: {pair.forward.__name__} / {pair.backward.__name__}"
            else:
                where = "the autograd's own op (numgpt/ops/shape.py, elementwise.py)"
            twin = " (numba twin)" if _has_twin(case) else ""
            print(f"{name:<{GRADCHECK_NAME_WIDTH}} {where}{twin}")
        print(f"{'model':<{GRADCHECK_NAME_WIDTH}} every parameter of a tiny GPTModel")
        return 0
    names = list(cases) + ["model"]
    if args.op and args.op not in names:
        raise UsageError(f"unknown op {args.op!r}: expected one of {', '.join(names)} (numgpt gradcheck --list)")
    if args.backward and not args.op:
        raise UsageError("--backward needs the op it replaces: numgpt gradcheck OP --backward module:function")
    if args.backward:
        return _check_your_backward(args.op, load_function(args.backward), args.backward, args.tolerance)
    twins = args.kernels == "numba"
    print("float64 central differences with a random upstream gradient, of numgpt's reference pairs (numgpt/ops)"
          + (" and their numba twins (numgpt/registry.py)" if twins else "") + f"; {_tolerance_words(args.tolerance)}")
    failed = 0
    for name in [args.op] if args.op else names:
        if name == "model":
            results = [("reference", check_model(tolerance=args.tolerance))]
            if twins:
                with kernel_mode("numba"):
                    results.append(("numba twin", check_model(tolerance=args.tolerance)))
        else:
            results = [("reference", check_case(name, tolerance=args.tolerance))]
            if twins and _has_twin(cases[name]):
                results.append(("numba twin", check_case(name, "numba", tolerance=args.tolerance)))
        for label, result in results:
            failed += not result.ok
            print(_gradcheck_line(name, label, result))
            if args.op:
                _print_inputs(result)
        if twins and name != "model" and _has_twin(cases[name]):
            difference = _twin_difference(name)
            failed += difference > ROUNDOFF_RTOL
            verdict = "ok    " if difference <= ROUNDOFF_RTOL else "FAILED"
            print(f"{'':<{GRADCHECK_NAME_WIDTH}} {'twin':<11} {verdict} output and "
                  f"gradients within {difference:.1e} of the reference (relative; limit {ROUNDOFF_RTOL:.0e})")
    return 1 if failed else 0


def _print_inputs(result):
    for report in result.inputs:
        print(f"    {report.name:<10} {str(report.shape):<12} {'ok    ' if report.ok else 'FAILED'} worst abs "
              f"{report.worst_abs_error:.2e}, worst rel {report.worst_rel_error:.2e}, at {report.worst_index}: "
              f"analytic {report.analytic:.6e}, numeric {report.numeric:.6e}")


def _check_your_backward(name, backward, spec, tolerance):
    """Finite differences at ``tolerance``, and numgpt's reference at round-off whatever the tolerance:
    a backward that finite differences pass but that differs from numgpt's beyond round-off is FAILED."""
    if name == "model":
        raise UsageError("--backward replaces one op's backward: name the op (numgpt gradcheck --list)")
    result = check_case(name, backward=backward, tolerance=tolerance)
    print(f"{name} with your backward {spec}, against float64 central differences ({_tolerance_words(tolerance)}):")
    _print_inputs(result)
    print(f"    {result.reference.describe()}")
    if all(report.ok for report in result.inputs) and not result.reference.ok:
        print(f"    finite differences alone pass at tolerance {tolerance}; numgpt's backward, "
              f"at float64 round-off, does not")
    print("ok" if result.ok else "FAILED")
    return 0 if result.ok else 1


def add_parser(sub):
    """The gradcheck subcommand's flags."""
    gc = sub.add_parser("gradcheck", help="float64 gradient check of each op and a tiny model",
                        description="Check numgpt's backward passes (the NumPy reference pairs in numgpt/ops, or "
                                    "with --kernels numba their numba twins too) against float64 central "
                                    "differences; or check your own backward of one op with --backward.")
    gc.add_argument("op", nargs="?", help="one op, with its inputs' worst errors (default: all, then the model)")
    gc.add_argument("--list", action="store_true", help="name every op and where its pair lives")
    gc.add_argument("--kernels", choices=("numpy", "numba"), default="numpy",
                    help="numpy: the reference pairs (default); numba: the numba twins as well")
    gc.add_argument("--backward", metavar="MODULE:FUNCTION",
                    help="your backward for OP (the signature of its <op>_backward), checked against finite "
                         "differences and against numgpt's: a difference from numgpt's beyond float64 round-off "
                         "fails, whatever --tolerance")
    gc.add_argument("--tolerance", choices=("float64", "torch"), default="float64",
                    help="float64: atol = rtol = 1e-6, from the measured float64 noise (default); torch: "
                         "PyTorch's atol=1e-5, rtol=1e-3, for checks ported from PyTorch")
    gc.set_defaults(run=cmd_gradcheck, check=arguments.check_gradcheck)
