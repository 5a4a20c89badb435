"""numgpt.io.hf_tokenizer against Hugging Face transformers' own tokenizer.

tests/reference/hf_llama/{llama_tiny,smollm2_tiny}/tokenizer_reference.json holds what
transformers' AutoTokenizer gave for a set of texts (ids with and without the post-processor's
special tokens, ids with every special token read as text, and decodes), written by
tests/reference/make_hf_llama_reference.py; nothing here needs transformers. Also: tiktoken's
special-token contract, the errors, the eos/bos ids, and numgpt's data loader on top of it.
"""
import functools
import json
import shutil
import socket
from pathlib import Path

import numpy
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from numgpt.data.datasets import create_dataloader_v1
from numgpt.errors import NumgptError
from numgpt.io.hf_tokenizer import HFTokenizer, TokenizerError, TokenizerNotFoundError
from numgpt.io.tokenizer import text_to_token_ids, token_ids_to_text

FIXTURE_VERSION = 1
FIXTURE_ROOT = Path(__file__).resolve().parent / "reference" / "hf_llama"
STALE = "re-run tests/reference/make_hf_llama_reference.py"
NAMES = ("llama_tiny", "smollm2_tiny")


def load_reference_json(path):
    """A tokenizer_reference.json, its fixture_version checked."""
    if not path.is_file():
        pytest.fail(f"missing fixture {path}: {STALE}")
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("fixture_version") != FIXTURE_VERSION:
        pytest.fail(f"stale fixture: {STALE} ({path.name} has fixture_version "
                    f"{document.get('fixture_version')}, the tests expect {FIXTURE_VERSION})")
    return document


@functools.cache
def reference(name):
    return load_reference_json(FIXTURE_ROOT / name / "tokenizer_reference.json")


def case(name, text):
    """transformers' results for one of the fixture's texts."""
    return next(c for c in reference(name)["cases"] if c["text"] == text)


@functools.cache
def hf_tokenizer(name):
    return HFTokenizer(FIXTURE_ROOT / name)


def copy_tokenizer(name, target, **config_changes):
    """The fixture's tokenizer files in ``target``, tokenizer_config.json updated with ``config_changes``."""
    target.mkdir(exist_ok=True)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(FIXTURE_ROOT / name / file, target / file)
    config = json.loads((target / "tokenizer_config.json").read_text(encoding="utf-8"))
    (target / "tokenizer_config.json").write_text(json.dumps({**config, **config_changes}), encoding="utf-8")
    return target


# ---------------------------------------------------------------- against transformers


def test_stale_fixture_fails(tmp_path):
    path = tmp_path / "tokenizer_reference.json"
    path.write_text(json.dumps({"fixture_version": FIXTURE_VERSION + 1, "cases": []}))
    with pytest.raises(pytest.fail.Exception, match=f"stale fixture: {STALE}"):
        load_reference_json(path)


@pytest.mark.parametrize("name", NAMES)
def test_ids_equal_transformers(name):
    tok = hf_tokenizer(name)
    wrong = []
    for c in reference(name)["cases"]:
        ids = tok.encode(c["text"], allowed_special="all")
        ids_no_special = tok.encode(c["text"], allowed_special="all", add_special_tokens=False)
        assert all(type(i) is int for i in ids + ids_no_special)
        if ids != c["ids"] or ids_no_special != c["ids_no_special"]:
            wrong.append((c["text"], ids, c["ids"], ids_no_special, c["ids_no_special"]))
    assert not wrong, f"{len(wrong)} texts differ from transformers, first: {wrong[0]}"


@pytest.mark.parametrize("name", NAMES)
def test_decode_equals_transformers(name):
    tok = hf_tokenizer(name)
    for c in reference(name)["cases"]:
        assert tok.decode(c["ids"]) == c["decoded"], c["text"]
        assert tok.decode(c["ids_no_special"]) == c["decoded_no_special"], c["text"]
        assert tok.decode(numpy.asarray(c["ids"], dtype=numpy.int64)) == c["decoded"], "NumPy ids"


@pytest.mark.parametrize("name", NAMES)
def test_special_text_not_allowed_is_ordinary_text_as_transformers_split_special_tokens(name):
    tok = hf_tokenizer(name)
    for c in reference(name)["cases"]:
        ids = tok.encode(c["text"], disallowed_special=(), add_special_tokens=False)
        assert ids == c["ids_split_special"], c["text"]


@pytest.mark.parametrize("name", NAMES)
def test_vocabulary_and_special_ids(name):
    tok, ref = hf_tokenizer(name), reference(name)
    assert tok.name == name
    assert tok.n_vocab == ref["n_vocab"]
    assert tok.bos_token_id == ref["bos_token_id"] and tok.eos_token_id == ref["eos_token_id"]
    assert tok.eot_token == ref["eos_token_id"]
    assert type(tok.eot_token) is int
    assert tok.special_tokens_set == set(ref["special_tokens"])
    model_config = json.loads((FIXTURE_ROOT / name / "config.json").read_text(encoding="utf-8"))
    assert tok.n_vocab == model_config["vocab_size"]
    assert tok.eos_token_id == model_config["eos_token_id"]


def test_llama_tokenizer_prepends_bos_and_smollm2_does_not():
    llama, smollm2 = hf_tokenizer("llama_tiny"), hf_tokenizer("smollm2_tiny")
    assert reference("llama_tiny")["bos_token_id"] == 298 and reference("smollm2_tiny")["bos_token_id"] == 0
    assert llama.encode("") == [298]
    assert llama.encode("", add_special_tokens=False) == []
    assert smollm2.encode("") == []
    hello = case("smollm2_tiny", "Hello, world!")
    assert smollm2.encode("Hello, world!") == hello["ids"] == hello["ids_no_special"]


# ---------------------------------------------------------------- tiktoken's special-token contract


def test_special_text_must_be_allowed_explicitly():
    tok = hf_tokenizer("smollm2_tiny")
    text = "<|im_start|>user\nHi<|im_end|>"
    with pytest.raises(TokenizerError, match=r"disallowed special token '<\|im_end\|>'") as raised:
        tok.encode(text, allowed_special={"<|im_start|>"})
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, NumgptError)
    with pytest.raises(ValueError, match="disallowed special token"):
        tok.encode(text)                                  # the default allows none
    with pytest.raises(ValueError, match=r"disallowed special token '<\|im_start\|>'"):
        tok.encode(text, allowed_special="all", disallowed_special={"<|im_start|>"})
    assert tok.encode(text, allowed_special={"<|im_start|>", "<|im_end|>"}) == case("smollm2_tiny", text)["ids"]
    assert tok.encode("no special text here") == tok.encode("no special text here", allowed_special="all")


def test_allowed_and_ordinary_special_text_in_one_string():
    # transformers cannot mix the two; the fixture's pieces can: allowed tokens cut the text, and
    # each piece between them is read with every special token as ordinary text.
    smollm2 = hf_tokenizer("smollm2_tiny")
    a, b = "<|im_start|>user\nHi<|im_end|>", "Hello, world!"
    got = smollm2.encode(a + "<|endoftext|>" + b, allowed_special={"<|endoftext|>"}, disallowed_special=())
    assert got == case("smollm2_tiny", a)["ids_split_special"] + [0] + case("smollm2_tiny", b)["ids_split_special"]

    llama = hf_tokenizer("llama_tiny")
    a = "<|begin_of_text|> and <|endoftext|> as text"
    got = llama.encode(a + "<|end_of_text|>" + b, allowed_special={"<|end_of_text|>"}, disallowed_special=())
    first, second = case("llama_tiny", a)["ids_split_special"], case("llama_tiny", b)["ids_split_special"]
    assert got == [298] + first + [299] + second


def test_allowed_names_the_tokenizer_lacks_are_ignored_as_tiktoken_does():
    # numgpt's text_to_token_ids allows "<|endoftext|>", which is ordinary text to the Llama tokenizer
    llama = hf_tokenizer("llama_tiny")
    text = "x<|endoftext|>y <|endoftext|>"
    ids = text_to_token_ids(text, llama)
    assert ids.dtype == numpy.int64 and ids.shape == (1, len(case("llama_tiny", text)["ids"]))
    assert ids.tolist() == [case("llama_tiny", text)["ids"]]
    assert token_ids_to_text(ids, llama) == case("llama_tiny", text)["decoded"]


def test_encode_takes_text_only():
    with pytest.raises(TypeError, match="takes a str"):
        hf_tokenizer("smollm2_tiny").encode(b"bytes")


# ---------------------------------------------------------------- what transformers adds to tokenizer.json


def test_a_named_special_token_missing_from_the_vocabulary_is_added(tmp_path):
    # transformers 5 (checked with 5.24) appends it as a special token: <|pad|> becomes id 400
    tok = HFTokenizer(copy_tokenizer("smollm2_tiny", tmp_path / "tok", pad_token="<|pad|>"))
    assert tok.n_vocab == 401
    assert "<|pad|>" in tok.special_tokens_set
    text = "Hello, world!"
    assert tok.encode("<|pad|>" + text, allowed_special="all") == [400] + case("smollm2_tiny", text)["ids"]


def test_add_bos_token_in_tokenizer_config_is_ignored_as_transformers_does(tmp_path):
    # transformers 5 drops add_bos_token / add_eos_token when tokenizer.json exists: its
    # post-processor alone decides (checked with 5.24)
    text = "Hello, world!"
    smollm2 = HFTokenizer(copy_tokenizer("smollm2_tiny", tmp_path / "s", add_bos_token=True, add_eos_token=True))
    assert smollm2.encode(text) == case("smollm2_tiny", text)["ids"]
    llama = HFTokenizer(copy_tokenizer("llama_tiny", tmp_path / "l", add_bos_token=False))
    assert llama.encode(text) == case("llama_tiny", text)["ids"]


def test_clean_up_tokenization_spaces_only_for_non_bpe_models(tmp_path):
    # BPE: transformers 5 ignores the flag, spaces before punctuation stay
    bpe = HFTokenizer(copy_tokenizer("smollm2_tiny", tmp_path / "bpe", clean_up_tokenization_spaces=True))
    text = "Hello , world !"
    assert bpe.decode(bpe.encode(text)) == text
    # a word-level model: the decoder joins words with spaces and the clean-up removes some
    word_level = Tokenizer(models.WordLevel({"hello": 0, ",": 1, "world": 2, ".": 3, "[UNK]": 4}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    for clean_up, expected in ((False, "hello , world ."), (True, "hello, world.")):
        directory = tmp_path / f"word_level_{clean_up}"
        directory.mkdir()
        word_level.save(str(directory / "tokenizer.json"))
        (directory / "tokenizer_config.json").write_text(json.dumps({"clean_up_tokenization_spaces": clean_up}))
        tok = HFTokenizer(directory)
        assert tok.encode("hello, world.") == [0, 1, 2, 3]
        assert tok.decode([0, 1, 2, 3]) == expected


# ---------------------------------------------------------------- eos / bos from the other files


def test_eos_and_bos_ids_from_config_json_when_the_tokenizer_names_none(tmp_path):
    directory = tmp_path / "tok"
    directory.mkdir()
    shutil.copyfile(FIXTURE_ROOT / "smollm2_tiny" / "tokenizer.json", directory / "tokenizer.json")
    tok = HFTokenizer(directory)
    assert tok.eot_token is None and tok.eos_token_id is None and tok.bos_token_id is None
    (directory / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 0]}))
    tok = HFTokenizer(directory)
    assert (tok.bos_token_id, tok.eos_token_id, tok.eot_token) == (1, 2, 2)   # a list: its first id
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"}}))
    assert HFTokenizer(directory).eot_token == 2 and HFTokenizer(directory).bos_token_id == 1
    (directory / "config.json").unlink()
    (directory / "tokenizer_config.json").unlink()
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    assert HFTokenizer(directory).eot_token == 1


# ---------------------------------------------------------------- errors


def test_a_directory_without_tokenizer_json_is_an_error_naming_it(tmp_path):
    for directory in (tmp_path, tmp_path / "absent"):
        with pytest.raises(TokenizerNotFoundError) as raised:
            HFTokenizer(directory)
        message = str(raised.value)
        assert str(directory) in message and "tokenizer.json" in message
        assert "GPT-2 models use numgpt's bundled tokenizer" in message
        assert isinstance(raised.value, FileNotFoundError) and isinstance(raised.value, NumgptError)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b'{"model": {"type": "BPE"}}'])
def test_an_unreadable_tokenizer_json_is_an_error_naming_it(tmp_path, content):
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(TokenizerError, match="tokenizer.json") as raised:
        HFTokenizer(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(raised.value)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, NumgptError)


def test_a_broken_tokenizer_config_is_an_error_naming_it(tmp_path):
    directory = copy_tokenizer("smollm2_tiny", tmp_path / "tok")
    (directory / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(NumgptError, match="tokenizer_config.json") as raised:
        HFTokenizer(directory)
    assert isinstance(raised.value, ValueError)
    (directory / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="expected a JSON object"):
        HFTokenizer(directory)


def test_decoding_an_unknown_id_is_an_error():
    tok = hf_tokenizer("smollm2_tiny")
    for bad in (400, -1):
        with pytest.raises(TokenizerError, match=f"no token has id {bad}; ids run from 0 to 399"):
            tok.decode([5, bad])


def test_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("HFTokenizer must not touch the network")
    monkeypatch.setattr(socket, "socket", no_network)
    tok = HFTokenizer(FIXTURE_ROOT / "llama_tiny")
    assert tok.encode("Hello, world!") == case("llama_tiny", "Hello, world!")["ids"]


# ---------------------------------------------------------------- numgpt's data loader on top


def test_create_dataloader_v1_with_the_llama_tokenizer(verdict_text):
    tok = hf_tokenizer("llama_tiny")
    loader = create_dataloader_v1(verdict_text, batch_size=2, max_length=16, stride=16, shuffle=False, tokenizer=tok)
    inputs, targets = next(iter(loader))
    assert inputs.dtype == numpy.int64 and targets.dtype == numpy.int64
    assert inputs.shape == (2, 16) and targets.shape == (2, 16)
    assert numpy.array_equal(inputs[:, 1:], targets[:, :-1])
    assert numpy.array_equal(inputs[1, :1], targets[0, -1:])    # stride = max_length: windows follow on
    assert inputs[0, 0] == reference("llama_tiny")["bos_token_id"]   # the post-processor's bos, once
    assert numpy.count_nonzero(loader.dataset.input_ids == 298) == 1
    assert 0 <= loader.dataset.input_ids.min() and loader.dataset.input_ids.max() < tok.n_vocab
    assert verdict_text.startswith(tok.decode(inputs[0, 1:].tolist() + inputs[1].tolist()))


def test_create_dataloader_v1_special_text_only_when_allowed(verdict_text):
    tok = hf_tokenizer("smollm2_tiny")
    text = verdict_text[:600] + "<|endoftext|>" + verdict_text[600:1200]
    plain = create_dataloader_v1(text, batch_size=1, max_length=8, stride=8, shuffle=False, tokenizer=tok)
    assert 0 not in plain.dataset.input_ids and 0 not in plain.dataset.target_ids
    split = create_dataloader_v1(text, batch_size=1, max_length=8, stride=8, shuffle=False, tokenizer=tok,
                                 allowed_special={"<|endoftext|>"})
    ids = numpy.concatenate([split.dataset.input_ids.ravel(), split.dataset.target_ids[-1:, -1]])
    assert numpy.count_nonzero(ids == 0) == 1
