"""Data-parallel training over MPI with the real thing: ``mpiexec`` from the Open MPI wheel
(the ``mpi`` and ``test`` extras), two ranks of ``numgpt train`` on the tiny preset."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from cli_process import numgpt_cli
from safetensors.numpy import load_file

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
TINY = ["--preset", "tiny", "--eval-freq", "3", "--eval-iter", "2"]       # dropout 0.1 stays on
KILL_DEADLINE_S = 60


def mpiexec(n, *args, timeout=300, env=ENV):
    assert MPIEXEC, "mpiexec not found: pip install 'numgpt[mpi]' (the test extra includes it)"
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "numgpt", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def checkpoint(run, step):
    directory = Path(run) / "checkpoints" / f"step-{step:08d}"
    return load_file(directory / "model.safetensors"), load_file(directory / "optimizer.safetensors")


def assert_bit_identical(a, b):
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for name in x:
            assert x[name].dtype == y[name].dtype == np.float32 or x[name].dtype == y[name].dtype
            assert np.array_equal(x[name], y[name]), name


def losses(run):
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in map(json.loads, open(Path(run) / "metrics.jsonl"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Six steps three ways: 2 ranks (twice), and 1 process with --grad-accum 2."""
    base = tmp_path_factory.mktemp("mpi")
    results = {}
    # one thread in the single process too, as each of the 2 ranks has: the numba kernels give the same
    # bits on any number of threads, NumPy's BLAS (NUMGPT_KERNELS=numpy) need not
    for name, n, extra in (("mpi_a", 2, []), ("mpi_b", 2, []), ("accum", 1, ["--grad-accum", "2", "--threads", "1"])):
        run = base / name
        result = (mpiexec(n, "train", *TINY, "--max-steps", 6, "--out", run, *extra) if n > 1 else
                  numgpt_cli("train", *TINY, "--max-steps", 6, "--out", run, *extra, env=ENV))
        assert result.returncode == 0, result.stderr
        results[name] = run, result
    return results


def test_two_ranks_equal_one_process_with_grad_accum_2_bit_for_bit(runs):
    (mpi_a, result), (mpi_b, _), (accum, _) = runs["mpi_a"], runs["mpi_b"], runs["accum"]
    assert_bit_identical(checkpoint(mpi_a, 5), checkpoint(accum, 5))      # weights and AdamW moments
    assert_bit_identical(checkpoint(mpi_a, 5), checkpoint(mpi_b, 5))      # and a second 2-rank run
    assert losses(mpi_a) == losses(accum) == losses(mpi_b)
    print(losses(mpi_a))
    assert result.stdout.count("Ep 1 (Step 000003)") == 1                  # rank 0 alone prints
    settings = json.loads((mpi_a / "settings.json").read_text())
    assert settings["processes"] == 2 and settings["train"]["grad_accum"] == 1


def test_resume_on_one_process_equals_the_uninterrupted_run(runs, tmp_path):
    run = tmp_path / "run"
    first = mpiexec(2, "train", *TINY, "--max-steps", 3, "--out", run)
    assert first.returncode == 0, first.stderr
    # grad_accum 1 -> 2
    second = numgpt_cli("train", "--resume", "--out", run, "--max-steps", 6, "--threads", 1, env=ENV)
    assert second.returncode == 0, second.stderr
    assert "Resuming from" in second.stdout
    assert_bit_identical(checkpoint(run, 5), checkpoint(runs["accum"][0], 5))


def test_a_global_batch_that_does_not_divide_is_refused(runs, tmp_path):
    run = tmp_path / "run"
    assert numgpt_cli("train", *TINY, "--max-steps", 1, "--out", run, env=ENV).returncode == 0
    result = mpiexec(2, "train", "--resume", "--out", run, "--max-steps", 2)
    assert result.returncode != 0
    assert result.stderr.count("cannot share them evenly") == 1, result.stderr


AUDIT = textwrap.dedent("""
    # rank 1 of the job, under an audit hook: any file opened for writing, made, renamed or
    # removed inside the run directory is recorded, then numgpt runs as usual
    import os, sys
    run = os.path.realpath(sys.argv[1]); log = sys.argv[2]; args = sys.argv[3:]
    touched = []
    def inside(path):
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(run)
        except (TypeError, ValueError):
            return False
    def hook(event, hook_args):
        if event == "open" and inside(hook_args[0]) and any(m in str(hook_args[1]) for m in "wax+"):
            touched.append(("open", hook_args[0]))
        elif (event == "open" and inside(hook_args[0]) and isinstance(hook_args[2], int)
              and hook_args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
            touched.append(("open", hook_args[0]))
        elif (event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.replace", "shutil.rmtree")
              and inside(hook_args[0])):
            touched.append((event, hook_args[0]))
    sys.addaudithook(hook)
    from numgpt.cli import main
    try:
        code = main(args)
    finally:
        with open(log, "w") as f:
            f.write(repr(touched))
    sys.exit(code)
""")


def test_only_rank_0_writes_into_the_run_directory(tmp_path):
    run, log, script = tmp_path / "run", tmp_path / "rank1.log", tmp_path / "rank1.py"
    script.write_text(AUDIT)
    args = ["train", *TINY, "--max-steps", "4", "--checkpoint-every", "2", "--out", str(run)]
    result = subprocess.run([MPIEXEC, "-n", "1", sys.executable, "-m", "numgpt", *args, ":",
                             "-n", "1", sys.executable, str(script), str(run), str(log), *args],
                            capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr
    assert log.read_text() == "[]"                                       # rank 1 wrote nothing there
    assert (run / "checkpoints" / "step-00000003" / "COMMITTED").is_file()   # and rank 0 wrote the run


def test_sigkill_of_a_rank_ends_the_job_and_the_last_checkpoint_resumes(tmp_path):
    run = tmp_path / "run"
    job = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "numgpt", "train", *TINY, "--max-steps", "400",
                            "--checkpoint-every", "2", "--eval-freq", "1000", "--out", str(run)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 240
        while not (run / "checkpoints" / "step-00000003" / "COMMITTED").is_file():
            assert time.time() < deadline and job.poll() is None, "no checkpoint came"
            time.sleep(0.2)
        ranks = subprocess.run(["pgrep", "-f", f"numgpt train .*--out {run}$"], capture_output=True, text=True)
        pids = [int(p) for p in ranks.stdout.split() if int(p) != job.pid]
        assert len(pids) == 2, ranks.stdout
        os.kill(max(pids), signal.SIGKILL)                               # one rank dies mid-run
        killed = time.time()
        code = job.wait(timeout=KILL_DEADLINE_S)
        print(f"the job ended {time.time() - killed:.1f} s after the kill, exit status {code}")
        assert code != 0
    finally:
        if job.poll() is None:
            job.kill()
    committed = sorted(p.parent.name for p in (run / "checkpoints").glob("step-*/COMMITTED"))
    last = int(committed[-1].split("-")[1])                 # the step it holds (0-based, as the log's)
    resumed = numgpt_cli("train", "--resume", "--out", run, "--max-steps", last + 3, env=ENV)   # two more
    assert resumed.returncode == 0, resumed.stderr
    assert f"(step {last} done, step {last + 1} next)" in resumed.stdout
    assert (run / "checkpoints" / f"step-{last + 2:08d}" / "COMMITTED").is_file()


def test_an_error_on_one_rank_aborts_the_job_and_is_printed_once(tmp_path):
    run, bad = tmp_path / "run", tmp_path / "missing.txt"
    args = ["train", *TINY, "--max-steps", "2", "--out", str(run)]
    start = time.time()
    result = subprocess.run([MPIEXEC, "-n", "1", sys.executable, "-m", "numgpt", *args, ":",
                             "-n", "1", sys.executable, "-m", "numgpt", *args, "--data", str(bad)],
                            capture_output=True, text=True, timeout=120, env=ENV)
    print(result.stderr)
    assert result.returncode != 0 and time.time() - start < 100
    assert result.stderr.count("missing.txt") == 1 and "(rank 1): error:" in result.stderr


def test_an_error_every_rank_meets_is_printed_once(tmp_path):
    result = mpiexec(2, "train", *TINY, "--max-steps", 2, "--out", tmp_path / "run", "--data", tmp_path / "none.txt",
                     timeout=120)
    assert result.returncode == 2 or result.returncode != 0
    assert result.stderr.count("none.txt") == 1, result.stderr


def test_without_mpi_nothing_of_it_is_imported():
    code = ("import sys, numgpt.cli, numgpt.training.train, numgpt.training.distributed as d; "
            "assert d.world().size == 1 and 'mpi4py' not in sys.modules, sorted(m for m in sys.modules if 'mpi' in m)")
    env = {k: v for k, v in ENV.items() if not k.startswith(("OMPI_COMM_WORLD", "PMI", "PMIX"))}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_the_seeds_loop_example_runs_data_parallel():
    example = Path(__file__).parent.parent / "examples" / "data_parallel.py"
    one = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=300, env=ENV)
    two = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(example)], capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    print(one.stdout, two.stdout)
    assert "1 process(es): global batch 2 x 64 tokens" in one.stdout
    assert two.stdout.count("process(es)") == 1 and "2 process(es): global batch 4 x 64 tokens" in two.stdout
    assert two.stdout.count("Ep 1 (Step 000004)") == 1                     # rank 0 alone prints
