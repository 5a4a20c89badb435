"""The offline GPT-2 tokenizer: known GPT-2 ids, the seed's corpus size, round
trips, the ranks against tiktoken's own reader, no network, and the sha256
check of the bundled files."""
import hashlib
import shutil
import socket

import numpy
import pytest
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from numgpt.autograd import Tensor
from numgpt.io import bundled, tokenizer as tokenizer_module
from numgpt.io.bundled import GPT2_ENCODER_JSON, GPT2_VOCAB_BPE, BundledFileError, bundled_path
from numgpt.io.tokenizer import GPT2_SPLIT_PATTERN, get_tokenizer, text_to_token_ids, token_ids_to_text

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


def test_ranks_equal_tiktokens_own_reading_of_both_bundled_files(monkeypatch):
    """tiktoken's reader builds the ranks from the merges (vocab.bpe) and asserts they equal encoder.json's."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")                      # read the files, cache nothing
    theirs = data_gym_to_mergeable_bpe_ranks(str(bundled_path(GPT2_VOCAB_BPE)), str(bundled_path(GPT2_ENCODER_JSON)))
    ours = get_tokenizer()._mergeable_ranks
    assert ours == theirs and len(ours) == 50256
    assert GPT2_SPLIT_PATTERN == r50k_pat_str


def test_the_tokenizer_is_built_with_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the tokenizer tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(tokenizer_module.tiktoken, "get_encoding", no_network)
    get_tokenizer.cache_clear()
    try:
        assert get_tokenizer().encode("Hello, world") == [15496, 11, 995]
    finally:
        get_tokenizer.cache_clear()


def test_a_damaged_bundled_file_is_an_error_naming_it(monkeypatch, tmp_path):
    shutil.copytree(bundled.RESOURCES, tmp_path / "resources")
    damaged = tmp_path / "resources" / GPT2_ENCODER_JSON
    data = bytearray(damaged.read_bytes())
    data[1000] ^= 0x01
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(bundled, "RESOURCES", tmp_path / "resources")
    get_tokenizer.cache_clear()
    try:
        with pytest.raises(BundledFileError) as raised:
            get_tokenizer()
    finally:
        get_tokenizer.cache_clear()
    message = str(raised.value)
    print(message)
    assert str(damaged) in message and bundled.SHA256[GPT2_ENCODER_JSON] in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
