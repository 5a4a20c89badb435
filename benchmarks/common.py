"""What the benchmarks share: the reference interpreter (``--torch-python``), the
resident child processes whose steps alternate, the machine description and the
report's last step (print it, write it).

Every bench_*.py imports this module and no bench_*.py imports another's
helpers (bench_step.py hands ``--model`` to bench_llama.py, one way).

The reference side (PyTorch, transformers, the seed's ``llms_from_scratch``)
runs in its own processes, by ``--torch-python``: by default the interpreter
running the benchmark, so that ``pip install -e '.[bench]'`` and then
``python benchmarks/bench_step.py`` measures both sides. The children are the
bench scripts themselves, run as scripts: their own folder, not the
repository root, is first on ``sys.path``, so the repository's ``kernels/``
folder cannot stand in for Hugging Face's ``kernels`` package, which
transformers imports (and kernels/__init__.py steps aside if it is ever
imported under that name).
"""
import ctypes
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REFERENCE_MODULES = ("torch", "transformers", "llms_from_scratch")
INSTALL_HINT = "pip install -e '.[bench]' (torch, transformers, llms-from-scratch), or name one with --torch-python"
SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def add_torch_python(parser):
    """The --torch-python option: the interpreter that runs PyTorch's and transformers' sides."""
    parser.add_argument("--torch-python", default=sys.executable,
                        help="the Python that runs the PyTorch and transformers sides (default: this one)")


def reference_versions(python):
    """{module: version or None} of REFERENCE_MODULES importable by ``python`` (from the benchmarks'
    folder, not the repository root), or {} when ``python`` does not run."""
    probe = ("import importlib, json\nversions = {}\nfor name in %r:\n    try:\n"
             "        versions[name] = getattr(importlib.import_module(name), '__version__', 'installed')\n"
             "    except Exception:\n        versions[name] = None\nprint(json.dumps(versions))" % (REFERENCE_MODULES,))
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300, cwd=BENCHMARKS)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else {}


def reference_side(python, needs=("torch", "llms_from_scratch")):
    """(torch's version, None) when ``python`` imports every module in ``needs``; else (None, one line
    for the report naming what it lacks and how to install it)."""
    versions = reference_versions(python)
    lacking = [name for name in needs if not versions.get(name)]
    if not lacking:
        return versions["torch"], None
    return None, (f"The reference side did not run: {python} cannot import {', '.join(lacking)}. "
                  f"{INSTALL_HINT}.")


def peak_mb():
    """This process's peak resident memory, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_line(error):
    """An exception as one line, for the report."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class Child:
    """A resident side: a process that answers one JSON line per command line on stdin."""

    def __init__(self, argv, env=None):
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=env, bufsize=1, cwd=BENCHMARKS)
        self.first = self.read()

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.process.args} ended (exit code {self.process.wait()})")
        return json.loads(line)

    def ask(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self):
        reply = self.ask("exit")
        self.process.wait()
        return reply


def alternate(children, timed_rounds, log=None):
    """Ask each child for a step in turn: one warm-up round, then ``timed_rounds``; a child that
    fails is dropped (closed) with its reason. Returns {times, first_step, losses, failed}, keyed
    by the children's names; ``children`` keeps the ones still running."""
    times = {name: [] for name in children}
    first_step, losses, failed = {}, {name: [] for name in children}, {}
    for round_ in range(timed_rounds + 1):
        for name, child in list(children.items()):
            try:
                reply = child.ask("step")
            except RuntimeError as error:                           # the child died (a crash, out of memory)
                reply = {"error": str(error)}
            if "error" in reply:
                failed[name] = reply["error"]
                child.process.wait()
                del children[name], times[name], losses[name]
                print(f"step {round_} {name} failed: {reply['error']}", file=sys.stderr)
                continue
            if round_ == 0:
                first_step[name] = reply["seconds"]                 # warm-up
            else:
                times[name].append(reply["seconds"])
            losses[name].append(reply["loss"])
            if log:
                print(f"step {round_} {name}: {reply['seconds'] * 1e3:.0f} ms, loss {reply['loss']:.4f}",
                      file=sys.stderr)
    return {"times": times, "first_step": first_step, "losses": losses, "failed": failed}


def run_json(argv, env=None):
    """The JSON lines a child prints, after it ends; its stderr's tail shown when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, cwd=BENCHMARKS)
    if done.returncode != 0:
        print(f"{' '.join(argv)} failed:\n" + "\n".join(done.stderr.strip().splitlines()[-15:]), file=sys.stderr)
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def openblas_corename():
    """The kernel family ('Haswell', 'SkylakeX', ...) the OpenBLAS mapped into this process runs, or '?'."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return "?"
    for path in paths:
        library = ctypes.CDLL(path)
        for symbol in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
            getter = getattr(library, symbol, None)
            if getter is not None:
                getter.restype = ctypes.c_char_p
                return getter().decode()
    return "?"


def blas_description():
    """'scipy-openblas 0.3.x; OpenBLAS kernels Haswell (OpenBLAS's own choice)': NumPy's BLAS and who chose
    its kernels (OPENBLAS_CORETYPE in the environment overrides OpenBLAS's own CPU check)."""
    import numpy
    blas = numpy.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    chooser = f"OPENBLAS_CORETYPE={pinned} set in the environment" if pinned else "OpenBLAS's own choice"
    return f"{blas.get('name', '?')} {blas.get('version', '')}; OpenBLAS kernels {openblas_corename()} ({chooser})"


def machine_description(torch_version=None):
    """One sentence: CPU, the SIMD flags that matter (avx2, avx512f, avx512_bf16, amx_bf16), cores, OS,
    Python, NumPy and its BLAS, numba, torch."""
    import numba
    import numpy

    from numgpt.kernels.matmul_choice import cpu_model_and_flags   # the parent's: a torch child may lack numgpt
    model, flags = cpu_model_and_flags(SIMD_FLAGS)
    return (f"{model} (flags: {', '.join(flags) or 'none of ' + ', '.join(SIMD_FLAGS)}), {os.cpu_count()} cores, "
            f"{platform.system()} {platform.machine()}; Python {platform.python_version()}, NumPy "
            f"{numpy.__version__} ({blas_description()}), numba {numba.__version__}, "
            f"torch {torch_version or 'not installed'}")


def bf16_path():
    """The CPU's bf16 path and why, for the targets' lines (numgpt.kernels.bf16.bf16_path())."""
    from numgpt.kernels.bf16 import bf16_path as detected          # the parent's: a torch child may lack numgpt
    path = detected()
    return f"{path.name} ({path.reason})"


def target_line(text, ratio, measured, bound, at_most=True):
    """'- text: **0.72** (measured) met' or '... MISSED'; ``ratio`` None: not measured, ``measured`` says why."""
    if ratio is None:
        return f"- {text}: not measured in this run ({measured})"
    met = ratio <= bound if at_most else ratio >= bound
    return f"- {text}: **{ratio:.2f}** ({measured}), {'met' if met else 'MISSED'}"


def write_report(report, out=None):
    """Print the Markdown report, and write it to ``out`` when given."""
    print(report)
    if out:
        Path(out).write_text(report)
