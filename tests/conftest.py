"""Shared fixtures: the seed's corpus (numgpt's bundled copy, never read from
outside the repository or downloaded) and one GPT-2 tokenizer per test session."""
import importlib
import sys
from pathlib import Path

import pytest

from numgpt.io.bundled import VERDICT, bundled_path, read_bundled
from numgpt.io.tokenizer import get_tokenizer


@pytest.fixture(scope="session")
def verdict_path():
    read_bundled(VERDICT)                       # its sha256 checked once
    return bundled_path(VERDICT)


@pytest.fixture(scope="session")
def verdict_text(verdict_path):
    return verdict_path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tokenizer():
    return get_tokenizer()


STAND_IN = Path(__file__).resolve().parent / "stand_in"


@pytest.fixture(scope="module")
def stand_in_cupy():
    """The strict CuPy stand-in (tests/stand_in/cupy) as ``import cupy``, for one test module;
    taken out of sys.path and sys.modules afterwards."""
    sys.path.insert(0, str(STAND_IN))
    try:
        module = importlib.import_module("cupy")
        assert module.stand_in.IS_STAND_IN, f"imported a cupy that is not the stand-in: {module}"
        yield module
    finally:
        sys.path.remove(str(STAND_IN))
        for name in [name for name in sys.modules if name == "cupy" or name.startswith("cupy.")]:
            del sys.modules[name]
