"""The float32 products' choice between numgpt's kernel and the BLAS (kernels/matmul_choice.py):
the rule on injected timings, the cache file's content, its reuse run to run, a corrupt or
hostile file set aside (measured again, never executed), the real timing path, and what
``numgpt info`` shows. On a CPU without AVX-512 the kernel cannot run, so the real dispatch
is checked to hand every product to the BLAS without measuring anything."""
import json
import os

import numpy as np
import pytest

from numgpt import cli
from numgpt.gradcheck import kernel_mode
from numgpt.kernels import matmul as k_matmul
from numgpt.kernels import matmul_choice
from numgpt.kernels.matmul_choice import BLAS, KERNEL, MatmulChooser

MACHINE = {"cpu": "a test CPU", "flags": ["avx2", "avx512f"], "numgpt": "0.0",
           "blas": "openblas 0.3 Haswell, 2 threads", "kernel_threads": 2}
FLOAT32_PRODUCT_RTOL = 1e-5        # K = 64 float32 products summed in two orders, against float64


def operands(M=512, K=768, N=2304, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((N, K), dtype=np.float32).T


class Timings:
    """An injected measure: fixed (kernel seconds, blas seconds), counting its calls."""

    def __init__(self, kernel_seconds, blas_seconds):
        self.seconds, self.calls = (kernel_seconds, blas_seconds), 0

    def __call__(self, a, b):
        self.calls += 1
        return self.seconds


def test_the_rule_takes_the_kernel_only_when_it_is_clearly_faster():
    assert matmul_choice.decide(1.0, 1.2) == KERNEL
    assert matmul_choice.decide(1.0, 1.0) == BLAS                          # a tie: the BLAS
    assert matmul_choice.decide(1.0, matmul_choice.KERNEL_MARGIN * 0.999) == BLAS
    assert matmul_choice.decide(2.0, 1.0) == BLAS


def test_shape_classes_round_up_to_powers_of_two_and_name_storage_and_stacks():
    a, b = operands(512, 768, 2304)
    assert matmul_choice.shape_class(a, b) == "512x1024x4096 a=N b=T one"
    assert matmul_choice.shape_class(b.T, a.T) == "4096x1024x512 a=N b=T one"
    assert matmul_choice.shape_class(a.T.copy().T, b.copy()) == "512x1024x4096 a=T b=N one"
    stack = np.zeros((24, 256, 64), dtype=np.float32)
    assert matmul_choice.shape_class(stack, stack.swapaxes(1, 2)) == "256x64x256 a=N b=T stack"
    assert matmul_choice.shape_class(stack[:1], stack[:1].swapaxes(1, 2)) == "256x64x256 a=N b=T one"


@pytest.mark.parametrize("seconds, want", [((1.0, 2.0), KERNEL), ((2.0, 1.0), BLAS)])
def test_a_class_is_measured_once_written_down_and_reused_by_the_next_run(tmp_path, seconds, want):
    path = tmp_path / "cache" / "matmul-choice-test.json"
    timings = Timings(*seconds)
    chooser = MatmulChooser(path, MACHINE, timings)
    a, b = operands()
    assert chooser.choice(a, b) == want
    assert chooser.choice(*operands(500, 700, 2300, seed=1)) == want        # the same class: not measured again
    assert timings.calls == 1
    content = json.loads(path.read_text())
    flops = 2.0 * 512 * 768 * 2304
    assert content == {"format": matmul_choice.CACHE_FORMAT, "version": matmul_choice.CACHE_VERSION,
                       "machine": MACHINE, "shapes": {"512x1024x4096 a=N b=T one": {
                           "choice": want, "kernel_gflops": flops / seconds[0] / 1e9,
                           "blas_gflops": flops / seconds[1] / 1e9}}}
    never = Timings(*reversed(seconds))                                     # would choose the other side
    next_run = MatmulChooser(path, MACHINE, never)
    assert next_run.set_aside is None
    assert next_run.choice(a, b) == want and never.calls == 0               # reproducible: read, not measured
    assert [name for name in os.listdir(path.parent)] == [path.name]        # no temporary file left behind


def corrupt_files():
    good = {"format": matmul_choice.CACHE_FORMAT, "version": matmul_choice.CACHE_VERSION, "machine": MACHINE,
            "shapes": {"512x1024x4096 a=N b=T one": {"choice": KERNEL, "kernel_gflops": 400.0, "blas_gflops": 300.0}}}

    def changed(**fields):
        return json.dumps({**good, **fields}).encode()

    def entry(**fields):
        return changed(shapes={"512x1024x4096 a=N b=T one": {**good["shapes"]["512x1024x4096 a=N b=T one"],
                                                             **fields}})
    return {
        "not JSON": (b"{'choice': __import__('os').system('touch PWNED')}", "not JSON"),
        "a pickle": (b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.",
                     "not JSON"),
        "not UTF-8": (b"\xff\xfe{}", "not JSON"),
        "a list": (b"[1, 2]", "not a"),
        "another format": (changed(format="something else"), "not a"),
        "another version": (changed(version=99), "not a"),
        "another machine": (changed(machine=dict(MACHINE, cpu="another CPU")), "another machine"),
        "an unknown choice": (entry(choice="os.system"), "its shapes"),
        "a NaN rate": (entry(kernel_gflops=float("nan")), "its shapes"),
        "a negative rate": (entry(blas_gflops=-1.0), "its shapes"),
        "a boolean rate": (entry(blas_gflops=True), "its shapes"),
        "a string rate": (entry(blas_gflops="300"), "its shapes"),
        "shapes not a dict": (changed(shapes=[1]), "its shapes"),
        "too large": (b" " * (matmul_choice.MAX_CACHE_BYTES + 1), "larger than"),
    }


@pytest.mark.parametrize("name", list(corrupt_files()))
def test_a_corrupt_or_hostile_file_is_set_aside_measured_again_and_rewritten(tmp_path, monkeypatch, name):
    data, why = corrupt_files()[name]
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "matmul-choice-test.json"
    path.write_bytes(data)
    timings = Timings(2.0, 1.0)
    chooser = MatmulChooser(path, MACHINE, timings)
    assert chooser.set_aside is not None and why in chooser.set_aside, chooser.set_aside
    assert chooser.choice(*operands()) == BLAS and timings.calls == 1       # measured again
    assert json.loads(path.read_text())["shapes"]["512x1024x4096 a=N b=T one"]["choice"] == BLAS
    assert not (tmp_path / "PWNED").exists()


def test_a_link_or_a_fifo_in_place_of_the_file_is_not_read_and_not_written_through(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text("keep")
    link = tmp_path / "matmul-choice-link.json"
    link.symlink_to(target)
    chooser = MatmulChooser(link, MACHINE, Timings(2.0, 1.0))
    assert "cannot open" in chooser.set_aside
    with pytest.warns(RuntimeWarning, match="cannot be kept in .*matmul-choice-link.json"):
        assert chooser.choice(*operands()) == BLAS                          # chosen, for this process
    assert "refusing" in chooser.unsaved and target.read_text() == "keep" and link.is_symlink()
    fifo = tmp_path / "matmul-choice-fifo.json"
    os.mkfifo(fifo)
    assert MatmulChooser(fifo, MACHINE, Timings(2.0, 1.0)).set_aside == "not a regular file"   # and no hang


def test_the_timing_path_measures_both_sides_on_the_operands(tmp_path):
    calls = []

    def stand_in_kernel(a, b, out):                                         # this CPU has no AVX-512 kernel
        calls.append(out.shape)
        return np.matmul(a, b, out=out)
    a, b = operands(64, 64, 96)
    kernel_seconds, blas_seconds = matmul_choice.time_both(stand_in_kernel, a, b)
    assert len(calls) == matmul_choice.MEASURE_ROUNDS + 1 and calls[0] == (64, 96)
    assert 0 < kernel_seconds < 1 and 0 < blas_seconds < 1
    chooser = MatmulChooser(tmp_path / "choice.json", MACHINE,
                            lambda x, y: matmul_choice.time_both(stand_in_kernel, x, y))
    assert chooser.choice(a, b) in (KERNEL, BLAS)
    entry = json.loads((tmp_path / "choice.json").read_text())["shapes"]["64x64x128 a=N b=T one"]
    assert entry["kernel_gflops"] > 0 and entry["blas_gflops"] > 0


def test_the_machine_fingerprint_names_this_cpu_its_flags_the_blas_and_the_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMGPT_HOME", str(tmp_path))
    machine = matmul_choice.machine_fingerprint(2)
    model, flags = matmul_choice.cpu_model_and_flags()
    assert machine["cpu"] == model and machine["flags"] == list(flags) and machine["kernel_threads"] == 2
    cpuinfo = open("/proc/cpuinfo").read().split()
    assert ("avx512f" in machine["flags"]) == ("avx512f" in cpuinfo)
    assert ("avx2" in machine["flags"]) == ("avx2" in cpuinfo)
    assert "threads" in machine["blas"]
    path = matmul_choice.cache_path(machine)
    assert path.parent == tmp_path and path.name.startswith("matmul-choice-") and path.suffix == ".json"
    assert matmul_choice.cache_path(dict(machine, cpu="other")) != path
    assert matmul_choice.cache_path(dict(machine)) == path                 # the same machine, the same file


def test_the_dispatch_follows_the_choice_and_stays_within_float32_tolerance(tmp_path, monkeypatch):
    a, b = operands(64, 64, 96)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    timings = Timings(1.0, 2.0)                                             # the kernel, where it can run
    old = k_matmul.set_chooser(MatmulChooser(tmp_path / "choice.json", MACHINE, timings))
    try:
        for _ in range(2):
            got = k_matmul.matmul(a, b)
            worst = float(np.max(np.abs(got - want) / (np.abs(want) + 1)))
            print(f"matmul against float64: worst relative error {worst:.2e}")
            assert got.dtype == np.float32 and worst <= FLOAT32_PRODUCT_RTOL
        if k_matmul.HAS_AVX512:
            assert timings.calls == 1 and np.array_equal(k_matmul.matmul(a, b), k_matmul.kernel_matmul(a, b))
        else:                                                               # no kernel: nothing measured or written
            assert timings.calls == 0 and not (tmp_path / "choice.json").exists()
            assert np.array_equal(got, np.matmul(a, b))
    finally:
        k_matmul.set_chooser(old)


def test_info_shows_each_class_and_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(k_matmul, "HAS_AVX512", True)                      # as on an AVX-512 machine
    path = tmp_path / "matmul-choice-test.json"
    chooser = MatmulChooser(path, MACHINE, Timings(1.0, 2.0))
    chooser.shapes = {"512x1024x4096 a=N b=T one": {"choice": KERNEL, "kernel_gflops": 400.0, "blas_gflops": 300.0},
                      "512x4096x1024 a=N b=T one": {"choice": BLAS, "kernel_gflops": 250.0, "blas_gflops": 410.0}}
    old = k_matmul.set_chooser(chooser)
    try:
        with kernel_mode("numba"):
            assert cli.main(["info"]) == 0
    finally:
        k_matmul.set_chooser(old)
    lines = capsys.readouterr().out.splitlines()
    print("\n".join(lines))
    assert any(line.startswith("matmul kernel") and "in use (AVX-512" in line for line in lines)
    assert any(line.startswith("matmul choices") and f"2 shape classes measured (1 kernel, 1 BLAS) in {path}" in line
               for line in lines)
    assert [line.split(None, 2)[2] for line in lines if line.startswith("matmul choice ")] == [
        "512x1024x4096 a=N b=T one: kernel (kernel 400, BLAS 300 GFLOP/s)",
        "512x4096x1024 a=N b=T one: blas (kernel 250, BLAS 410 GFLOP/s)"]
