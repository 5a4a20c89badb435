"""The fused epilogues against their parts run one by one, in one run.

    python benchmarks/bench_fused.py --out benchmarks/fused.md

Both sides are numgpt's numba mode; "op by op" is the same code under
``numgpt.registry.op_by_op()``, which runs every fused op as its parts (their
numba twins), as a learner's backward or the NumPy path would.

- Each epilogue at the seed's shapes (batch 2 x 256, C 768, F 3072, dropout
  0.1), forward and backward through the tape, the two sides alternating,
  median of ``--repeats``. bias + GELU includes its matrix products (the
  fused op owns them), so its difference is the epilogue's saving.
- The seed's whole training step (GPT_CONFIG_124M, zero_grad, forward, loss,
  backward, AdamW), the two sides alternating, median of ``--steps``.

Before timing, each epilogue and the step are run both ways from the same
seed and must give the same bits (outputs, gradients, loss).
"""
import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy
from common import machine_description, write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # the checkout's numgpt, when run from a clone

import numgpt  # noqa: E402
from numgpt import ops, registry  # noqa: E402
from numgpt.autograd import Tensor  # noqa: E402
from numgpt.gradcheck import kernel_mode  # noqa: E402
from numgpt.models.gpt import GPT_CONFIG_124M, GPTModel  # noqa: E402
from numgpt.optim import AdamW  # noqa: E402
from numgpt.training.train import calc_loss_batch  # noqa: E402

B, T, C, F, P = 2, 256, 768, 3072, 0.1


def tensor(shape, seed, scale=1.0):
    data = numpy.random.default_rng(seed).standard_normal(shape).astype(numpy.float32) * numpy.float32(scale)
    return Tensor(data, requires_grad=True)


def epilogues():
    """name -> a function that runs the epilogue forward and backward once and returns its arrays."""
    x, y = tensor((B, T, C), 0), tensor((B, T, C), 1)
    weight, bias = tensor((F, C), 2, 0.03), tensor((F,), 3)
    scale, shift = tensor((C,), 4), tensor((C,), 5)
    dh, dc, dn = (numpy.random.default_rng(s).standard_normal(shape).astype(numpy.float32)
                  for s, shape in ((6, (B, T, F)), (7, (B, T, C)), (8, (B, T, C))))

    def run(make, douts, leaves):
        for leaf in leaves:
            leaf.grad = None
        numgpt.manual_seed(9)
        outs = make()
        outs = outs if isinstance(outs, tuple) else (outs,)
        total = sum(((out * Tensor(d)).sum() for out, d in zip(outs, douts)), Tensor(numpy.float32(0)))
        total.backward()
        return [out.data for out in outs] + [leaf.grad for leaf in leaves]

    return {
        "bias + GELU (with its products)": lambda: run(lambda: ops.linear_gelu(x, weight, bias), (dh,),
                                                       (x, weight, bias)),
        "dropout + residual add": lambda: run(lambda: ops.dropout_add(x, y, P, True), (dc,), (x, y)),
        "dropout + residual add + LayerNorm": lambda: run(
            lambda: ops.dropout_add_layer_norm(x, y, P, True, scale, shift), (dc, dn), (x, y, scale, shift)),
    }


def seed_step():
    """(a function that runs one seed step and returns its loss, the model)."""
    numgpt.manual_seed(123)
    model = GPTModel(GPT_CONFIG_124M)
    optimizer = AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    rng = numpy.random.default_rng(0)
    inputs, targets = (rng.integers(0, GPT_CONFIG_124M["vocab_size"], (B, T)) for _ in range(2))

    def step():
        optimizer.zero_grad()
        loss = calc_loss_batch(inputs, targets, model)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def sides():
    return {"fused": contextlib.nullcontext, "op by op": registry.op_by_op}


def same_bits(a, b):
    return all(numpy.array_equal(p, q) for p, q in zip(a, b)) and len(a) == len(b)


def alternate(function, repeats):
    """Median seconds per side of ``function()``, the sides alternating; one untimed call each first."""
    times = {name: [] for name in sides()}
    for round_ in range(repeats + 1):
        for name, context in sides().items():
            with context():
                start = time.perf_counter()
                function()
                if round_:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the Markdown report here (and print it)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per epilogue and side")
    parser.add_argument("--steps", type=int, default=6, help="timed seed steps per side")
    args = parser.parse_args()
    lines = ["# Fused epilogues against their parts one by one (numgpt, numba mode)", "",
             f"Machine: {machine_description()}. One run; the two sides alternate.", "",
             f"Epilogues at batch {B} x {T}, C {C}, F {F}, dropout {P}; forward and backward, "
             f"median of {args.repeats}.", "",
             "| epilogue | op by op ms | fused ms | fused / op by op | same bits |", "|---|---|---|---|---|"]
    with kernel_mode("numba"):
        for name, run in epilogues().items():
            fused_arrays = run()
            with registry.op_by_op():
                parts_arrays = run()
            equal = same_bits(fused_arrays, parts_arrays)
            if not equal:
                raise SystemExit(f"{name}: the fused op and its parts disagree; nothing timed")
            median = alternate(run, args.repeats)
            lines.append(f"| {name} | {median['op by op'] * 1e3:.2f} | {median['fused'] * 1e3:.2f} | "
                         f"{median['fused'] / median['op by op']:.2f} | yes |")
        step = seed_step()
        losses = {}
        for name, context in sides().items():
            with context():
                losses[name] = seed_step()()
        if losses["fused"] != losses["op by op"]:
            raise SystemExit(f"seed step: losses differ {losses}; nothing timed")
        median = alternate(step, args.steps)
    lines += ["", f"The seed's training step (GPT_CONFIG_124M, batch {B} x {T}, dropout 0.1, AdamW), median of "
              f"{args.steps}: op by op {median['op by op'] * 1e3:.0f} ms, fused {median['fused'] * 1e3:.0f} ms, "
              f"**fused / op by op {median['fused'] / median['op by op']:.3f}** (first-step losses equal: "
              f"{losses['fused']:.6f})."]
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
