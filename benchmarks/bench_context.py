"""numgpt's tokens/s at context 1024 against context 256, batch 2 each, in one run.

    python benchmarks/bench_context.py --out benchmarks/context.md

Issue 15's target: tokens/s at context 1024 (batch 2) >= 90% of tokens/s at
context 256 (batch 2). bench_step.py --scale times each shape once, in its
own process, minutes apart; here both shapes stay resident in their own
processes (bench_step.py's numgpt side, GPT_CONFIG_124M with the context
changed, dropout 0.1, AdamW) and their steps alternate, so that both see the
same machine load; the ratio is of the median step times.
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

from common import Child, machine_description, write_report

HERE = Path(__file__).resolve().parent

SHAPES = ((256, 2), (1024, 2))          # (context, batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the Markdown report here (and print it)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per shape (after one warm-up step)")
    args = parser.parse_args()
    children = {shape: Child([sys.executable, str(HERE / "bench_step.py"), "--child", "numgpt",
                              "--context", str(shape[0]), "--batch", str(shape[1])]) for shape in SHAPES}
    times = {shape: [] for shape in SHAPES}
    for round_ in range(args.steps + 1):                          # round 0 warms up
        for shape, child in children.items():
            reply = child.ask("step")
            if "error" in reply:
                sys.exit(f"context {shape[0]} x batch {shape[1]}: {reply['error']}")
            if round_:
                times[shape].append(reply["seconds"])
    peaks = {shape: child.close()["peak_mb"] for shape, child in children.items()}
    rate = {(T, B): T * B / statistics.median(times[(T, B)]) for T, B in SHAPES}
    ratio = rate[SHAPES[1]] / rate[SHAPES[0]]
    lines = ["# numgpt: tokens/s at context 1024 against context 256 (batch 2)", "",
             f"Machine: {machine_description('not used')}; load average (1 min) {os.getloadavg()[0]:.1f} after. "
             f"GPT_CONFIG_124M with the context changed, dropout 0.1, AdamW; {args.steps} timed steps per shape "
             "after one warm-up, the two shapes alternating.", "",
             "| context x batch | median ms/step | tokens/s | peak memory | step times (ms) |", "|---|---|---|---|---|"]
    for T, B in SHAPES:
        lines.append(f"| {T} x {B} | {statistics.median(times[(T, B)]) * 1e3:.0f} | {rate[(T, B)]:.0f} | "
                     f"{peaks[(T, B)] / 1024:.2f} GB | {', '.join(f'{t * 1e3:.0f}' for t in times[(T, B)])} |")
    lines += ["", f"**tokens/s at context 1024 / at context 256: {ratio:.0%}** (issue 15 target: >= 90%)."]
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
