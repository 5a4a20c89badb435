"""The numgpt command as a real subprocess, for the CLI tests: run it, wait for
a line of its output, and check the one-line error of bad input."""
import os
import subprocess
import sys
import time

ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def numgpt_cli(*args, timeout=300, check=None, env=ENV):
    """Run ``python -m numgpt ARGS``; with ``check``, assert its exit status."""
    result = subprocess.run([sys.executable, "-m", "numgpt", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, env=env)
    if check is not None:
        assert result.returncode == check, result.stderr
    return result


def start_numgpt(*args):
    """Start ``python -m numgpt ARGS`` in the background, its output piped."""
    return subprocess.Popen([sys.executable, "-m", "numgpt", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_line(process, fragment, timeout=120):
    """Read the process's stdout up to the first line holding ``fragment``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if fragment in line:
            return line
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"no line with {fragment!r}: {process.stderr.read()}")


def assert_usage_error(result, *fragments):
    """Exit status 2 and exactly one line on stderr, naming what was wrong."""
    print(result.stderr)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
