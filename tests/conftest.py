"""Shared fixtures: the seed's corpus (numgpt's bundled copy, never read from
outside the repository or downloaded) and one GPT-2 tokenizer per test session."""
import pytest

from numgpt.bundled import VERDICT, bundled_path, read_bundled
from numgpt.tokenizer import get_tokenizer


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
