"""numgpt's bf16 matrix products against PyTorch's (oneDNN), and the float32 ones, on the
seed's product shapes, side by side, in one run.

    python benchmarks/bench_bf16_gemm.py --out benchmarks/bf16_gemm.md

Issue 24's target: numgpt's bf16 kernel on the seed's product shapes
(512x768x2304, 512x768x3072, 512x3072x768, 512x768x50257 and their backward
shapes) at >= 0.8 x oneDNN's rate through PyTorch.

The shapes: each linear layer of GPT_CONFIG_124M at batch 2 x 256 (M = 512
tokens), as numgpt runs its three products: the forward x @ W.T, the input's
gradient dout @ W and the weight's gradient dout.T @ x (transposed operands
as views, as numgpt passes them).

The sides, each in its own resident process (bench_step.py's way), asked for
one shape at a time in turn so that both see the same machine load; each
figure is the best of ``--repeats`` timed calls after one untimed call:
- numgpt bf16: ``numgpt.kernels.bf16.matmul_bf16`` on float32 operands (it
  rounds them to bf16 itself: part of its time), on the CPU's bf16 path
  (named in the report);
- numgpt float32: ``numgpt.kernels.matmul.matmul`` (the machine's choice per
  shape class between numgpt's kernel and the BLAS), numgpt's kernel alone
  where the CPU has AVX-512, and NumPy's BLAS;
- PyTorch: ``torch.matmul`` on bf16 tensors (converted before timing; oneDNN
  on CPU) and on float32 tensors, torch.set_num_threads(2).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy

from common import (Child, add_torch_python, bf16_path, machine_description, reference_side, target_line,
                    write_report)

HERE = Path(__file__).resolve()
TOKENS, C, V = 512, 768, 50257
LAYERS = (("qkv", C, 3 * C), ("fc", C, 4 * C), ("proj", 4 * C, C), ("out_head", C, V))   # (name, in, out)
TARGET = 0.8                     # numgpt bf16 / oneDNN bf16, at least
# a pause before each side's calls: OpenBLAS's and OpenMP's worker threads busy-wait for a while
# after their last call (OpenBLAS about 0.1 s), and on 2 cores they took most of the next side's
# time (numgpt's float32 kernel measured at 77-130 GFLOP/s right after the BLAS, 170-210 alone)
SETTLE_SECONDS = 0.5


def products():
    """[(label, (M, K, N), a_transposed, b_transposed)] of the seed's products, forward first."""
    rows = []
    for name, n_in, n_out in LAYERS:
        rows += [(f"{name} forward x @ W.T", (TOKENS, n_in, n_out), False, True),
                 (f"{name} dx = dout @ W", (TOKENS, n_out, n_in), False, False),
                 (f"{name} dW = dout.T @ x", (n_out, TOKENS, n_in), True, False)]
    return rows


def operands(shape, a_transposed, b_transposed, seed=0):
    """float32 (a, b) for an (M, K) @ (K, N) product, each a transposed view of its storage when asked."""
    M, K, N = shape
    rng = numpy.random.default_rng(seed)
    a = rng.standard_normal((K, M) if a_transposed else (M, K), dtype=numpy.float32)
    b = rng.standard_normal((N, K) if b_transposed else (K, N), dtype=numpy.float32)
    return (a.T if a_transposed else a), (b.T if b_transposed else b)


def best_seconds(product, repeats):
    time.sleep(SETTLE_SECONDS)                                      # the last side's threads stop spinning
    product()                                                       # untimed: compiles, caches, warms
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return best


def numgpt_rates(index, repeats):
    """{side: GFLOP/s} of product ``index`` by numgpt's bf16 and float32 products and NumPy's BLAS."""
    from numgpt.kernels import bf16
    from numgpt.kernels import matmul as kernel
    _, shape, a_transposed, b_transposed = products()[index]
    a, b = operands(shape, a_transposed, b_transposed)
    out = numpy.empty((shape[0], shape[2]), dtype=numpy.float32)
    sides = {"numgpt bf16": lambda: bf16.matmul_bf16(a, b, out=out),
             "numgpt float32 (its choice)": lambda: kernel.matmul(a, b, out=out),
             "NumPy's BLAS float32": lambda: numpy.matmul(a, b, out=out)}
    if kernel.kernel_operands(a, b, out) is not None:
        sides["numgpt's kernel float32"] = lambda: kernel.kernel_matmul(a, b, out=out)
    flops = 2.0 * shape[0] * shape[1] * shape[2]
    return {side: flops / best_seconds(product, repeats) / 1e9 for side, product in sides.items()}


def torch_rates(index, repeats):
    """{side: GFLOP/s} of product ``index`` by torch.matmul in bf16 (oneDNN) and in float32."""
    import torch
    torch.set_num_threads(2)
    _, shape, a_transposed, b_transposed = products()[index]
    a, b = (torch.from_numpy(x) for x in operands(shape, a_transposed, b_transposed))
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    flops = 2.0 * shape[0] * shape[1] * shape[2]
    with torch.no_grad():
        return {"PyTorch bf16 (oneDNN)": flops / best_seconds(lambda: torch.matmul(a16, b16), repeats) / 1e9,
                "PyTorch float32": flops / best_seconds(lambda: torch.matmul(a, b), repeats) / 1e9}


def serve(side, repeats):
    """Child loop: a product's index per line in, its rates as one JSON line out."""
    rates = numgpt_rates if side == "numgpt" else torch_rates
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "exit":
            print(json.dumps({}), flush=True)
            return
        print(json.dumps(rates(int(line), repeats)), flush=True)


def render(rows, torch_version, torch_missing, repeats):
    path = bf16_path()
    columns = list(dict.fromkeys(side for _, rates in rows for side in rates))
    lines = ["# bf16 and float32 matrix products: numgpt against PyTorch, the seed's shapes", "",
             f"Machine: {machine_description(torch_version)}. numgpt's bf16 path: {path}.", "",
             f"GFLOP/s, best of {repeats} after one untimed call and a {SETTLE_SECONDS} s pause; the sides alternate "
             "product by product. numgpt bf16 includes rounding its float32 operands to bf16 and packing them; "
             "PyTorch's bf16 operands are converted before the timing.", "",
             "| product (M x K x N) | " + " | ".join(columns) + " | numgpt bf16 / PyTorch bf16 |",
             "|---|" + "---|" * (len(columns) + 1)]
    ratios = []
    for (label, shape, _, _), rates in rows:
        theirs = rates.get("PyTorch bf16 (oneDNN)")
        ratio = rates["numgpt bf16"] / theirs if theirs else None
        if ratio is not None:
            ratios.append((ratio, label))
        lines.append(f"| {label} ({'x'.join(map(str, shape))}) | "
                     + " | ".join(f"{rates[side]:.3g}" if side in rates else "" for side in columns)
                     + f" | {f'{ratio:.2f}' if ratio is not None else ''} |")
    if torch_missing:
        lines += ["", torch_missing]
    worst = min(ratios) if ratios else (None, "")
    lines += ["", f"Issue 24's target (this CPU's bf16 path: {path}):", "",
              target_line(f"numgpt's bf16 products / oneDNN's through PyTorch, the worst of the seed's shapes >= "
                          f"{TARGET}", worst[0], f"the worst: {worst[1]}" if ratios else "PyTorch did not run",
                          TARGET, at_most=False)]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the Markdown report here (and print it)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per product and side")
    parser.add_argument("--child", choices=("numgpt", "torch"), help=argparse.SUPPRESS)
    add_torch_python(parser)
    args = parser.parse_args()
    if args.child:
        return serve(args.child, args.repeats)
    repeats = ["--repeats", str(args.repeats)]
    sides = {"numgpt": Child([sys.executable, str(HERE), "--child", "numgpt", *repeats])}
    torch_version, torch_missing = reference_side(args.torch_python, needs=("torch",))
    if torch_version:
        sides["torch"] = Child([args.torch_python, str(HERE), "--child", "torch", *repeats])
    rows = []
    for index, product in enumerate(products()):
        rates = {}
        for child in sides.values():
            rates.update(child.ask(str(index)))
        print(f"{product[0]}: " + ", ".join(f"{side} {rate:.0f}" for side, rate in rates.items()), file=sys.stderr)
        rows.append((product, rates))
    for child in sides.values():
        child.close()
    write_report(render(rows, torch_version, torch_missing, args.repeats), args.out)


if __name__ == "__main__":
    main()
