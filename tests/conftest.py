"""Shared fixtures: the seed's corpus (read from the shared data folder, never
downloaded) and one GPT-2 tokenizer per test session."""
from pathlib import Path

import pytest

from numgpt.tokenizer import get_tokenizer

VERDICT_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "the-verdict.txt"


@pytest.fixture(scope="session")
def verdict_path():
    if not VERDICT_PATH.is_file():
        pytest.fail(f"the seed's corpus is not at {VERDICT_PATH}: the tests need ../shared/data beside the repo")
    return VERDICT_PATH


@pytest.fixture(scope="session")
def verdict_text(verdict_path):
    return verdict_path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tokenizer():
    return get_tokenizer()
