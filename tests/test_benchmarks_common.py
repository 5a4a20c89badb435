"""The benchmarks' shared module (benchmarks/common.py) and how the scripts use it: no import
cycle between benchmarks, the reference interpreter defaults to the running one, a missing
torch is reported with how to install it, the machine description names the SIMD flags that
matter, and the report's last step is one function. Nothing here runs a benchmark."""
import argparse
import ast
import json
import stat
import sys
from pathlib import Path


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import common  # noqa: E402


def benchmark_imports():
    """{script name: the benchmarks' own modules it imports (top level or in a function)}."""
    own = {path.stem for path in BENCHMARKS.glob("*.py")}
    graph = {}
    for path in sorted(BENCHMARKS.glob("bench_*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        graph[path.stem] = names & own
    return graph


def test_every_benchmark_imports_common_and_no_other_benchmarks_helpers():
    graph = benchmark_imports()
    print(graph)
    assert len(graph) >= 8
    for name, imported in graph.items():
        assert "common" in imported, f"{name} does not use benchmarks/common.py"
        others = imported - {"common"}
        assert others <= ({"bench_llama"} if name == "bench_step" else set()), f"{name} imports {others}"
    assert "bench_step" not in set().union(*graph.values()), "bench_step <-> bench_llama: the old cycle"


def test_no_benchmark_names_one_machines_interpreter_and_the_default_is_this_one():
    for path in BENCHMARKS.glob("*.py"):
        assert "/work/" not in path.read_text(), path.name
    parser = argparse.ArgumentParser()
    common.add_torch_python(parser)
    assert parser.parse_args([]).torch_python == sys.executable


def stand_in_python(folder, versions):
    """An 'interpreter' that answers the reference probe with ``versions``, as one with those installed would."""
    path = folder / "python"
    path.write_text(f"#!/bin/sh\necho '{json.dumps(versions)}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_the_reference_side_runs_only_with_its_modules_and_says_how_to_install_them(tmp_path):
    everything = stand_in_python(tmp_path, {"torch": "2.9.0", "transformers": "4.57.0", "llms_from_scratch": "1.0"})
    assert common.reference_side(everything) == ("2.9.0", None)
    (tmp_path / "partial").mkdir()
    partial = stand_in_python(tmp_path / "partial", {"torch": "2.9.0", "transformers": None,
                                                     "llms_from_scratch": "1.0"})
    assert common.reference_side(partial, needs=("torch",)) == ("2.9.0", None)
    version, why = common.reference_side(partial, needs=("torch", "transformers"))
    assert version is None and f"{partial} cannot import transformers" in why
    assert "pip install -e '.[bench]'" in why
    version, why = common.reference_side(str(tmp_path / "no-such-python"))
    assert version is None and "cannot import torch, llms_from_scratch" in why and "'.[bench]'" in why


def test_the_bench_extra_installs_the_reference_side():
    setup = (BENCHMARKS.parent / "setup.cfg").read_text()
    extra = setup.split("\nbench =\n", 1)[1].split("\n\n", 1)[0].split("\n[", 1)[0]
    packages = [line.split(">")[0].split("=")[0].strip() for line in extra.splitlines() if line.startswith("    ")]
    assert packages[:3] == ["torch", "transformers", "llms-from-scratch"], packages


def test_the_machine_description_names_the_cpu_and_the_flags_that_matter():
    text = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    described = common.machine_description(None)
    print(described)
    assert described.startswith(model) and "torch not installed" in described
    for flag in common.SIMD_FLAGS:
        assert (f" {flag}" in described.split(")")[0]) == (flag in flags), flag
    assert common.machine_description("2.9.0").endswith("torch 2.9.0")


def test_target_lines_say_met_missed_or_why_not_measured():
    line = common.target_line("step <= 0.60", 0.55, "550 / 1000 ms", 0.60)
    assert line == "- step <= 0.60: **0.55** (550 / 1000 ms), met"
    assert common.target_line("step <= 0.60", 0.85, "x", 0.60).endswith("MISSED")
    assert common.target_line("rate >= 0.8", 0.85, "x", 0.8, at_most=False).endswith("met")
    assert common.target_line("rate >= 0.8", 0.75, "x", 0.8, at_most=False).endswith("MISSED")
    assert common.target_line("run", None, "measured by another script", 0.25) == (
        "- run: not measured in this run (measured by another script)")


class FakeChild:
    """A resident side's replies, in order; ``process.wait`` as a finished process's."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.process = argparse.Namespace(wait=lambda: 0)

    def ask(self, command):
        assert command == "step"
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_alternate_warms_up_then_times_and_drops_a_side_that_fails():
    children = {"good": FakeChild([{"seconds": 9.0, "loss": 11.0}, {"seconds": 1.0, "loss": 10.0},
                                   {"seconds": 2.0, "loss": 9.0}]),
                "crashes": FakeChild([{"seconds": 5.0, "loss": 11.0}, RuntimeError("child ended (exit code -9)")]),
                "refuses": FakeChild([{"error": "NotImplementedError: not available in this numgpt"}])}
    result = common.alternate(children, 2)
    assert result["times"] == {"good": [1.0, 2.0]} and result["first_step"] == {"good": 9.0, "crashes": 5.0}
    assert result["losses"] == {"good": [11.0, 10.0, 9.0]}
    assert result["failed"] == {"refuses": "NotImplementedError: not available in this numgpt",
                                "crashes": "child ended (exit code -9)"}
    assert list(children) == ["good"]


def test_write_report_prints_and_writes(tmp_path, capsys):
    common.write_report("# title\n", tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text() == "# title\n" and capsys.readouterr().out == "# title\n\n"
    common.write_report("# only printed\n")
    assert capsys.readouterr().out == "# only printed\n\n"


def test_the_gemm_benchmark_times_the_issues_shapes_and_their_backward_shapes():
    import bench_bf16_gemm
    shapes = [shape for _, shape, _, _ in bench_bf16_gemm.products()]
    forward = [(512, 768, 2304), (512, 768, 3072), (512, 3072, 768), (512, 768, 50257)]   # issue 24's list
    assert shapes[0::3] == forward
    assert shapes[1::3] == [(M, N, K) for M, K, N in forward]                 # dx = dout @ W
    assert shapes[2::3] == [(N, M, K) for M, K, N in forward]                 # dW = dout.T @ x


def test_the_step_benchmark_prints_each_target_with_the_bf16_path_and_its_figure():
    import bench_step
    lines = bench_step.render_targets({"numgpt": 1.0, "torch": 2.0, "autocast": 1.5, "bf16": 0.5})
    text = "\n".join(lines)
    print(text)
    assert "this CPU's bf16 path: " in lines[1]
    assert "numgpt 32-true / PyTorch eager float32 <= 0.60 (every CPU): **0.50** (1000 / 2000 ms), met" in text
    assert ("numgpt bf16-mixed / PyTorch eager float32 <= 0.20 (a CPU with AMX): **0.25** (500 / 2000 ms), "
            "MISSED") in text
    assert ("numgpt bf16-mixed / PyTorch under bf16 autocast <= 0.50 (a CPU with AMX): **0.33** (500 / 1500 ms), "
            "met") in text
    missing = "\n".join(bench_step.render_targets({"numgpt": 1.0}))
    assert "0.60 (every CPU): not measured in this run (needs the sides numgpt and torch)" in missing
    assert "bf16-true / numgpt float32 >= 1.6: not measured in this run (needs the generation of bf16 and numgpt)" \
        in missing
    generation = {"numgpt": {"tokens_per_s": 40.0}, "bf16": {"tokens_per_s": 70.0},
                  "transformers": {"tokens_per_s": 20.0}}
    rendered = "\n".join(bench_step.render_targets({"numgpt": 1.0}, generation))
    assert "bf16-true / numgpt float32 >= 1.6: **1.75** (70.0 / 40.0 tokens/s), met" in rendered
    assert "bf16-true / transformers float32 >= 2.0: **3.50** (70.0 / 20.0 tokens/s), met" in rendered


def test_the_step_report_renders_a_run_with_a_side_not_available_and_the_scale_rows():
    import bench_step
    medians = {"numgpt": 1.0, "torch": 2.0, "autocast": 1.5}
    steps = {"times": {name: [seconds] for name, seconds in medians.items()},
             "first_step": dict(medians), "losses": {name: [10.9] for name in medians},
             "described": {"numgpt": {"kernels": "numba"}, "torch": {"attention": "none"},
                           "autocast": {"attention": "none"}},
             "failed": {"bf16": "NotImplementedError: bf16-mixed is not available in this numgpt"},
             "generation": {"numgpt": {"tokens_per_s": 40.0}, "torch": {"tokens_per_s": 20.0}},
             "peaks": {"numgpt": 2048.0, "torch": 4096.0, "autocast": 4096.0}}
    products = {"labels": ["qkv forward x @ W.T"], "NumPy's BLAS": [100.0]}
    scale_rows = [{"context": 256, "batch": 1, "precision": "32-true",
                   "numgpt": {"batch": 1, "seconds": 0.5, "peak_mb": 1024.0, "estimate_mb": 1000.0},
                   "torch": {"batch": 1, "seconds": 1.0, "peak_mb": 2048.0}},
                  {"context": 256, "batch": 1, "precision": "bf16-mixed",
                   "numgpt": {"batch": 1, "skipped": "bf16-mixed is not available in this numgpt"},
                   "torch": {"batch": 1, "seconds": 0.8, "peak_mb": 2048.0}}]
    report = bench_step.render(argparse.Namespace(steps=1), bench_step.FULL, "2.9.0", None, None, None,
                               {"worst_rel": 1e-6}, {"NumPy's BLAS": 100.0}, products, steps, scale_rows,
                               (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    print(report)
    assert "| PyTorch eager under torch.autocast(\"cpu\", dtype=torch.bfloat16) | 1500 |" in report
    assert "Not timed: numgpt bf16-mixed (numgpt.autocast, numba kernels): NotImplementedError: bf16-mixed is not " \
           "available in this numgpt" in report
    assert "compile time not measured (--no-compile-time)." in report
    assert "| 256 | 1 | 32-true | 500 | 512 | 1.00 GB (est. 0.98) | 1000 | 256 | 2.00 GB | 0.50 |" in report
    assert "| 256 | 1 | bf16-mixed | skipped: bf16-mixed is not available in this numgpt |" in report
    assert "numgpt 32-true / PyTorch eager float32 <= 0.60 (every CPU): **0.50** (1000 / 2000 ms), met" in report
