"""Issue 25's targets: loading a 124M model's .pth with numgpt.load_torch against loading the same
weights from safetensors in numgpt (numgpt.io.safe_io.read_safetensors, as loaders use it: each tensor
an array of its own; and with copy=False, views of one buffer): time <= 1.2x, peak memory <= 1.3x.

    python benchmarks/bench_torch_files.py --out benchmarks/torch_files.md

Writing the .pth needs torch (and llms-from-scratch for the seed's GPTModel; without it the same
state dict is made by numgpt's GPTModel and saved with torch.save); the measurements run in fresh
processes that import numgpt only. Each reader runs --repeats times, alternating; the table gives
the median time and the median rise of the process's peak RSS (VmHWM) over its imports.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from common import machine_description, write_report

PROBE = textwrap.dedent("""
    import sys, time
    import numgpt
    from numgpt.io.safe_io import read_safetensors
    def peak():
        return int([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]) * 1024
    kind, path = sys.argv[1:]
    before = peak()
    start = time.perf_counter()
    loaded = (numgpt.load_torch(path) if kind == "pth" else
              read_safetensors(path, copy=kind == "safetensors")[0])
    seconds = time.perf_counter() - start
    print(seconds, peak() - before, len(loaded))
""")


LABELS = {"pth": "model.pth, `numgpt.load_torch`",
          "safetensors": "model.safetensors, `read_safetensors` (arrays of their own)",
          "safetensors-views": "model.safetensors, `read_safetensors(copy=False)` (views of one buffer)"}


def write_files(directory):
    """(model.pth, model.safetensors) of one GPT-2 124M state dict in the seed's layout."""
    import torch

    import numgpt
    from numgpt.io.safe_io import write_safetensors
    torch.manual_seed(123)
    try:
        from llms_from_scratch.ch04 import GPTModel
        state = GPTModel(numgpt.GPT_CONFIG_124M).state_dict()
    except ImportError:
        state = {key: torch.from_numpy(value.copy()) for key, value in
                 numgpt.GPTModel(numgpt.GPT_CONFIG_124M).state_dict().items()}
    pth, safetensors = directory / "model.pth", directory / "model.safetensors"
    torch.save(state, pth)
    write_safetensors(safetensors, {key: value.contiguous().numpy() for key, value in state.items()})
    return pth, safetensors


def measure(kind, path):
    result = subprocess.run([sys.executable, "-c", PROBE, kind, str(path)], capture_output=True, text=True,
                            check=True)
    seconds, rise, count = result.stdout.split()
    return float(seconds), int(rise), int(count)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the table to this markdown file")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pth, safetensors = write_files(Path(tmp))
        paths = {"pth": pth, "safetensors": safetensors, "safetensors-views": safetensors}
        runs = {kind: [] for kind in paths}
        for _ in range(args.repeats):
            for kind, path in paths.items():
                runs[kind].append(measure(kind, path))
        sizes = {kind: path.stat().st_size for kind, path in paths.items()}
    counts = {kind: values[0][2] for kind, values in runs.items()}
    time_of = {kind: statistics.median(value[0] for value in values) for kind, values in runs.items()}
    peak_of = {kind: statistics.median(value[1] for value in values) for kind, values in runs.items()}
    lines = [
        "| file | bytes | tensors | load time (median) | peak RSS rise (median) |",
        "|---|---|---|---|---|",
        *(f"| {LABELS[kind]} | {sizes[kind]:,} | {counts[kind]} | "
          f"{time_of[kind]:.3f} s | {peak_of[kind] / 2**20:.0f} MiB |" for kind in runs),
        "",
        *(f"load_torch against {LABELS[kind]}: time ratio {time_of['pth'] / time_of[kind]:.2f} (target <= 1.2), "
          f"peak ratio {peak_of['pth'] / peak_of[kind]:.2f} (target <= 1.3)" for kind in runs if kind != "pth"),
        "",
        f"{args.repeats} runs of each, alternating, each in a fresh process. Machine: {machine_description()}.",
    ]
    write_report("# numgpt.load_torch against numgpt's safetensors reader (GPT-2 124M, seed layout)\n\n"
                 + "\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
