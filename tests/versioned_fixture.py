"""Reading a reference fixture written by a script that needs torch: the file
must exist and carry the fixture_version the tests expect, else the test
fails and says which script to re-run."""
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.numpy import load_file


def load_versioned(path, expected_version, script):
    """(tensors, metadata) of one .safetensors fixture, read with NumPy alone."""
    path = Path(path)
    stale = f"re-run {script}"
    if not path.exists():
        pytest.fail(f"missing fixture {path}: {stale}")
    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata() or {}
    version = metadata.get("fixture_version")
    if version != str(expected_version):
        pytest.fail(f"stale fixture: {stale} ({path.name} has fixture_version {version}, "
                    f"the tests expect {expected_version})")
    return load_file(str(path)), metadata
