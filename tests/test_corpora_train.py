"""numgpt train --data on token stores and other tools' token files: the seed's run from a store
of the-verdict.txt equals the text path bit for bit, a store-backed run resumes mid-epoch bit for
bit (shuffled windows and random offsets), a changed store is refused on resume, a store with a
tokenizer of its own sizes the model's vocabulary; and tokenizer directories read their
tokenizer.json. Tiny models, a few steps, in-process (numgpt.cli.main)."""
import json
import shutil

import numpy as np
import pytest
from token_file_writers import write_llmc, write_nanogpt

import numgpt
from numgpt.cli import main
from numgpt.data.prepare import prepare
from numgpt.data.token_store import TokenStore
from numgpt.io.checkpoint import CheckpointManager, load_checkpoint
from numgpt.io.families import SourceError
from numgpt.io.hf_tokenizer import HFTokenizer

# the tiny preset on 32-token windows in batches of 8: the-verdict's 4,612 training tokens give 18 steps an
# epoch, so every run here stops mid-epoch
TINY = ["--preset", "tiny", "--context-length", "32", "--batch-size", "8", "--eval-iter", "1"]
EVERY_STEP, AT_START = ["--eval-freq", "1"], ["--eval-freq", "100"]     # evaluations are compared / skipped
COMPARED = ("train_losses", "val_losses", "tokens_seen", "batches_digest", "loader_state")


def train(out, *flags):
    code = main(["train", "--out", str(out), *TINY, *map(str, flags)])
    assert code == 0
    return load_checkpoint(CheckpointManager(out / "checkpoints").latest())


def assert_same_run(a, b):
    for field in COMPARED:
        assert a.state["train_state"][field] == b.state["train_state"][field], field
    for name, array in a.model_state.items():
        assert np.array_equal(array, b.model_state[name]), name


@pytest.fixture(autouse=True)
def no_loss_plot(monkeypatch):
    """The loss plot (matplotlib, seconds a run) is not what these tests check: left out."""
    monkeypatch.setattr("numgpt.training.run.RunDirectory.draw_plot", lambda self, records: None)


@pytest.fixture(scope="module")
def verdict_store(tmp_path_factory, verdict_path):
    out = tmp_path_factory.mktemp("store") / "verdict"
    prepare([verdict_path], out, workers=1)
    return out


def test_the_seeds_run_from_a_store_equals_the_text_path_and_resumes_mid_epoch(tmp_path, verdict_store, capsys):
    text = train(tmp_path / "text", *EVERY_STEP, "--max-steps", 2)
    store = train(tmp_path / "store", *EVERY_STEP, "--data", verdict_store, "--max-steps", 2)
    print("losses", text.state["train_state"]["train_losses"], text.state["train_state"]["val_losses"])
    assert_same_run(text, store)
    settings = json.loads((tmp_path / "store" / "settings.json").read_text())
    assert settings["data_sha256"] == TokenStore(verdict_store).manifest_sha256

    train(tmp_path / "cut", *EVERY_STEP, "--data", verdict_store, "--max-steps", 1)
    assert main(["train", "--resume", "--out", str(tmp_path / "cut"), "--max-steps", "2"]) == 0
    assert_same_run(store, load_checkpoint(CheckpointManager(tmp_path / "cut" / "checkpoints").latest()))

    kept = verdict_store.rename(verdict_store.with_name("kept"))         # another store at the same path
    prepare([verdict_store.parent / "kept" / "manifest.json"], verdict_store, workers=1)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(tmp_path / "cut"), "--max-steps", "3"]) == 2
    error = capsys.readouterr().err
    print(error)
    assert settings["data_sha256"] in error and TokenStore(verdict_store).manifest_sha256 in error
    shutil.rmtree(verdict_store)
    kept.rename(verdict_store)


def test_random_offsets_from_a_store_resume_bit_for_bit(tmp_path, verdict_store):
    whole = train(tmp_path / "whole", *AT_START, "--data", verdict_store, "--sampling", "random", "--max-steps", 2)
    assert set(whole.state["train_state"]["loader_state"]) == {"epoch_key", "batches_yielded"}
    train(tmp_path / "cut", *AT_START, "--data", verdict_store, "--sampling", "random", "--max-steps", 1)
    assert main(["train", "--resume", "--out", str(tmp_path / "cut"), "--max-steps", "2"]) == 0
    assert_same_run(whole, load_checkpoint(CheckpointManager(tmp_path / "cut" / "checkpoints").latest()))


def test_nanogpt_files_train_and_a_bad_llmc_shard_stops_before_training(tmp_path, verdict_text, tokenizer, capsys):
    ids = tokenizer.encode(verdict_text, disallowed_special=())
    write_nanogpt(tmp_path / "train.bin", ids[:4000])
    write_nanogpt(tmp_path / "val.bin", ids[4000:])
    train(tmp_path / "run", *AT_START, "--data", tmp_path, "--max-steps", 1)
    llmc = tmp_path / "llmc"
    llmc.mkdir()
    write_llmc(llmc / "tiny_train_000001.bin", ids[:4000])
    write_llmc(llmc / "tiny_val_000000.bin", ids[4000:])
    (llmc / "tiny_val_000000.bin").write_bytes((llmc / "tiny_val_000000.bin").read_bytes()[:-6])
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "bad"), *TINY, "--data", str(llmc)]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "tiny_val_000000.bin" in error and "truncated" in error
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_a_store_with_its_own_tokenizer_sizes_the_model(tmp_path, verdict_path):
    assert main(["prepare", str(verdict_path), "--out", str(tmp_path / "own"), "--tokenizer-train",
                 "--vocab-size", "400", "--workers", "1"]) == 0
    store = TokenStore(tmp_path / "own")
    tokenizer = HFTokenizer(tmp_path / "own" / "tokenizer")
    assert store.n_vocab == tokenizer.n_vocab == 400 and store.manifest["dtype"] == "uint16"
    train_tokens = store.split("train")
    assert train_tokens.slice(0, 50).tolist() == tokenizer.encode(numgpt.load_the_verdict()[:1000],
                                                                 add_special_tokens=False)[:50]
    checkpoint = train(tmp_path / "run", *AT_START, "--data", tmp_path / "own", "--max-steps", 1)
    assert checkpoint.config["vocab_size"] == 400
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--max-steps", "2"]) == 0


def test_a_tokenizer_directory_reads_its_tokenizer_json_and_never_falls_back_to_gpt2(tmp_path, verdict_text):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([verdict_text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                               show_progress=False))
    (tmp_path / "only").mkdir()
    bpe.save(str(tmp_path / "only" / "tokenizer.json"))          # the library's own save(): no config.json
    (tmp_path / "only" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    loaded = numgpt.get_tokenizer(tmp_path / "only")
    assert isinstance(loaded, HFTokenizer) and loaded.n_vocab == 300
    assert loaded.encode("I had always thought", add_special_tokens=False) == bpe.encode("I had always thought").ids
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="neither a tokenizer.json nor a config.json"):
        numgpt.get_tokenizer(tmp_path / "empty")


def test_a_tokenizer_saved_by_transformers_gives_transformers_ids():
    """tests/reference/hf_trained_tokenizer: a BPE trained with `tokenizers` and saved by transformers'
    save_pretrained (tokenizer.json and tokenizer_config.json, no config.json), with the ids transformers
    gave (make_hf_tokenizer_reference.py); special-token text allowed, as transformers encodes it."""
    from pathlib import Path
    directory = Path(__file__).parent / "reference" / "hf_trained_tokenizer"
    expected = json.loads((directory / "expected.json").read_text(encoding="utf-8"))
    assert not (directory / "config.json").exists()
    loaded = numgpt.get_tokenizer(directory)
    assert isinstance(loaded, HFTokenizer) and loaded.n_vocab == expected["vocab_size"]
    for text, ids in expected["ids"].items():
        assert loaded.encode(text, allowed_special="all") == ids, text
        assert loaded.decode(ids) == text
    assert expected["ids"]["a word<|endoftext|>another"].count(loaded.eot_token) == 1   # the special token
