"""Knowing the install: ``numgpt --version`` and ``numgpt info``, threads,
the memory check where /proc/meminfo is missing, and honest errors (bad input
is one line and exit 2, a bug is a traceback and exit 1, NUMGPT_DEBUG=1 shows
every traceback)."""
import importlib.metadata
import os
import subprocess
import sys

import numba
import numpy
import pytest
from cli_process import ENV, numgpt_cli
from threadpoolctl import threadpool_info

import numgpt
from numgpt import backend
from numgpt.cli import train as cli_train
from numgpt.errors import NumgptError, UsageError

def test_version_is_declared_once_and_installed_with_it():
    result = numgpt_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"numgpt {numgpt.__version__}"
    assert importlib.metadata.version("numgpt") == numgpt.__version__      # setup.cfg reads numgpt.__version__


def test_info_prints_the_install_the_libraries_kernels_threads_and_caches(tmp_path):
    env = dict(ENV, NUMGPT_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_CACHE", None)
    result = numgpt_cli("info", env=env)
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    facts = dict(line.split(None, 1) if not line.startswith(("kernel mode", "matmul kernel", "numgpt cache",
                                                             "Hugging Face hub cache", "numba cache"))
                 else (line[:24].strip(), line[24:].strip()) for line in result.stdout.splitlines())
    assert facts["numgpt"].startswith(numgpt.__version__)
    assert facts["Python"].startswith(".".join(map(str, sys.version_info[:3])))
    assert facts["NumPy"] == numpy.__version__
    assert facts["numba"].startswith(numba.__version__) and "threading layer omp)" in facts["numba"]
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"][0]
    assert blas["version"] in facts["BLAS"] and blas["architecture"] in facts["BLAS"]
    assert facts["kernel mode"].startswith(os.environ.get("NUMGPT_KERNELS", "numba"))
    assert facts["matmul kernel"].startswith(("in use", "not used"))
    assert f"{os.cpu_count()} cores" in facts["threads"]
    assert facts["CUDA"].startswith("CuPy not installed")      # the test environment has no CuPy
    assert facts["numgpt cache"] == str(tmp_path / "home")
    assert facts["Hugging Face hub cache"] == str(tmp_path / "hf" / "hub")
    assert facts["numba cache"].endswith("__pycache__")


def test_threads_are_set_for_the_kernels_and_the_blas():
    before = backend.get_num_threads()
    try:
        backend.set_num_threads(1)
        assert backend.get_num_threads() == (1, 1)
    finally:
        backend.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert backend.get_num_threads() == before
    for bad in (0, numba.config.NUMBA_NUM_THREADS + 1):
        with pytest.raises(UsageError, match=f"threads {bad}: expected 1 to {numba.config.NUMBA_NUM_THREADS}"):
            backend.set_num_threads(bad)


def test_threads_flag_on_the_commands(tmp_path):
    too_many = numba.config.NUMBA_NUM_THREADS + 1
    result = numgpt_cli("train", "--out", tmp_path / "run", "--preset", "tiny", "--threads", too_many)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"threads {too_many}" in result.stderr
    one = numgpt_cli("train", "--out", tmp_path / "one", "--preset", "tiny", "--max-steps", "1", "--eval-iter", "1",
                     "--threads", "1")
    assert one.returncode == 0, one.stderr


def test_the_memory_check_falls_back_and_says_when_it_is_skipped(tmp_path, monkeypatch, capsys):
    available = cli_train._memory_available(tmp_path / "no-meminfo")    # as on a machine without /proc
    assert available is not None and available > 0                      # sysconf's free pages
    monkeypatch.setattr(os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert cli_train._memory_available(tmp_path / "no-meminfo") is None
    cli_train._check_memory(numgpt.PRESETS["tiny"], 2, 64, None)
    assert "memory check skipped" in capsys.readouterr().err
    with pytest.raises(UsageError, match="GiB"):
        cli_train._check_memory(numgpt.GPT_CONFIG_124M, 100000, 256, 2**30)


def test_every_numgpt_error_is_a_numgpt_error_and_a_builtin_one():
    from numgpt.io.checkpoint import CheckpointError
    from numgpt.data.datasets import DataError
    from numgpt.io.download import DownloadError
    from numgpt.nn.layers import StateDictError
    from numgpt.io.pretrained import WeightsError, WeightsNotFoundError
    from numgpt.training.run import RunError
    from numgpt.io.safe_io import UnsafeFileError
    from numgpt.io.bundled import BundledFileError
    for error in (CheckpointError, DataError, DownloadError, StateDictError, WeightsError, WeightsNotFoundError,
                  RunError, UnsafeFileError, UsageError, BundledFileError):
        assert issubclass(error, NumgptError), error


BUG = """
import sys
from numgpt import cli
from numgpt.cli import info
def broken(args):
    raise {error}("an internal mistake")
info.cmd_info = broken
sys.exit(cli.main(["info"]))
"""


def test_a_bug_shows_its_traceback_and_exits_1():
    # built-in errors are bugs unless numgpt raised them as input errors
    for error in ("KeyError", "ValueError", "OSError"):
        result = subprocess.run([sys.executable, "-c", BUG.format(error=error)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 1, (error, result.stderr)
        assert "Traceback" in result.stderr and "an internal mistake" in result.stderr


def test_numgpt_debug_shows_the_traceback_of_bad_input(tmp_path):
    quiet = numgpt_cli("train", "--out", tmp_path / "r", "--data", tmp_path / "missing.txt")
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    loud = numgpt_cli("train", "--out", tmp_path / "r", "--data", tmp_path / "missing.txt",
                      env=dict(ENV, NUMGPT_DEBUG="1"))
    print(loud.stderr)
    assert loud.returncode == 2 and "Traceback" in loud.stderr and "UsageError" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()
