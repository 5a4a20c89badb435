"""Data-parallel training over MPI on one machine (loopback): what the gradient exchange costs.

    python benchmarks/bench_mpi.py --out benchmarks/mpi.md

Measures, with Open MPI's mpiexec (the ``mpi`` extra):
1. the allreduce (sum) of the 124M model's gradient, one flat float32 buffer
   (163 M values, 650 MB), between 2 ranks on this machine: median of a few;
2. the seed's training step (GPT_CONFIG_124M, batch 2 x 256 per process,
   AdamW) with N = 1 (2 threads) and N = 2 (1 thread each, so both use the
   machine's 2 cores): seconds per step and tokens per second, and for N = 2
   the time the step waits for the gradient buckets after its backward pass
   (``GradientAverager.last_wait_s``: in MPI's Wait only), against the allreduce time of (1): the
   fraction of the exchange hidden behind the backward pass;
3. the scaling to 2, 4, 8 and 16 machines on 10 and 25 Gb/s links, computed
   (not measured) from the step's compute time of (2) and the gradient size:
   a ring allreduce moves 2 (N - 1) / N x 650 MB through each machine's link.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import write_report

HERE = Path(__file__).resolve()
BATCH, SEQ, STEPS = 2, 256, 4
LINKS_GBPS = (10, 25)
MACHINES = (2, 4, 8, 16)


def env():
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMPI_MCA_rmaps_base_oversubscribe="1")


def allreduce_child():
    import numpy
    from mpi4py import MPI
    import numgpt
    comm = MPI.COMM_WORLD
    size = sum(p.data.size for p in numgpt.GPTModel(numgpt.GPT_CONFIG_124M).parameters())
    buffer = numpy.ones(size, dtype=numpy.float32)
    times = []
    for _ in range(4):
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        times.append(time.perf_counter() - start)
    if comm.rank == 0:
        print(json.dumps({"values": size, "bytes": size * 4, "seconds": statistics.median(times[1:])}), flush=True)


def step_child():
    import numpy
    import numgpt
    world = numgpt.training.distributed.world()
    numgpt.manual_seed(123)
    model = numgpt.GPTModel(numgpt.GPT_CONFIG_124M).train()
    optimizer = numgpt.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    averager = world.gradient_averager(model.parameters())
    waits = []
    rng = numpy.random.default_rng(world.rank)
    x = rng.integers(0, 50257, (BATCH, SEQ + 1))
    times = []
    for _ in range(STEPS + 1):
        world.barrier()
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = numgpt.calc_loss_batch(x[:, :-1], x[:, 1:], model)
        if averager is not None:
            averager.arm()
        loss.backward()
        if averager is not None:
            averager.finish()
            waits.append(averager.last_wait_s)                 # the time spent waiting for the network
        optimizer.step()
        times.append(time.perf_counter() - start)
    if world.is_main:
        import numba
        print(json.dumps({"processes": world.size, "threads": numba.get_num_threads(),
                          "seconds": statistics.median(times[1:]),
                          "wait": statistics.median(waits[1:]) if waits else 0.0}), flush=True)


def run_json(argv, threads):
    out = subprocess.run(argv, capture_output=True, text=True, env=dict(env(), NUMBA_NUM_THREADS=str(threads),
                                                                        OPENBLAS_NUM_THREADS=str(threads)))
    if out.returncode:
        sys.exit(f"{argv} failed: {out.stderr[-2000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=("allreduce", "step"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "allreduce":
        return allreduce_child()
    if args.child == "step":
        return step_child()
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    me = [sys.executable, str(HERE)]
    allreduce = run_json([mpiexec, "-n", "2", *me, "--child", "allreduce"], 1)
    one = run_json([*me, "--child", "step"], 2)
    two = run_json([mpiexec, "-n", "2", *me, "--child", "step"], 1)
    hidden = max(0.0, 1.0 - two["wait"] / allreduce["seconds"])
    gb = allreduce["bytes"] / 1e9
    lines = ["# Data-parallel training over MPI: loopback figures and scaling", "",
             f"Open MPI (mpiexec -n 2) on this machine's 2 cores; the seed's 124M model, batch {BATCH} x {SEQ} "
             f"per process, AdamW.", "",
             f"- allreduce of the whole gradient ({allreduce['values']:,} float32 values, {gb * 1000:.0f} MB) "
             f"between 2 ranks: **{allreduce['seconds']:.2f} s** ({gb / allreduce['seconds']:.1f} GB/s)",
             f"- step, 1 process x {one['threads']} threads: {one['seconds']:.2f} s "
             f"({BATCH * SEQ / one['seconds']:.0f} tokens/s)",
             f"- step, 2 processes x {two['threads']} thread: {two['seconds']:.2f} s for twice the tokens "
             f"({2 * BATCH * SEQ / two['seconds']:.0f} tokens/s); waiting for the gradient after the backward "
             f"pass: {two['wait']:.2f} s, so **{100 * hidden:.0f}%** of the exchange was hidden behind it", "",
             "Several machines, computed: a ring allreduce moves 2 (N-1)/N x the gradient through each link; "
             f"compute time per step {one['seconds']:.2f} s (one machine's step above), the exchange overlapped "
             f"as measured ({100 * hidden:.0f}% hidden). Speedup over one machine at a fixed batch per machine:", "",
             "| machines | " + " | ".join(f"{g} Gb/s: exchange, step, speedup" for g in LINKS_GBPS) + " |",
             "|---|" + "---|" * len(LINKS_GBPS)]
    for n in MACHINES:
        cells = []
        for gbps in LINKS_GBPS:
            exchange = 2 * (n - 1) / n * gb * 8 / gbps                   # seconds on the link
            step = one["seconds"] + exchange * (1 - hidden)
            cells.append(f"{exchange:.2f} s, {step:.2f} s, {n * one['seconds'] / step:.1f}x")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
