"""numgpt train's data: --data read as a text file, a token store or other trainers' token
files, checked against the run's tokenizer and, when the run resumes, against the bytes it trained on.
"""
import contextlib
import os
from pathlib import Path

from numgpt.data.datasets import (DataLoader, GPTDatasetV1, RandomWindowLoader, TokenWindows, TooFewTokens, read_text,
                                  split_text)
from numgpt.data.token_files import holds_token_files, open_token_files
from numgpt.data.token_store import MANIFEST, TOKENIZER_DIR, TokenStore
from numgpt.errors import UsageError
from numgpt.io import bundled, safe_io
from numgpt.io.hf_tokenizer import HFTokenizer
from numgpt.training.run import RunError


def _read_corpus(data):
    """(text, sha256 of its bytes) of --data, or of the bundled corpus when None."""
    path = bundled.bundled_path(bundled.VERDICT) if data is None else Path(data)
    text = read_text(path)
    return text, safe_io.sha256_file(path)


def _recorded_data_present(flags, saved, run):
    """A resumed run whose recorded data file is gone: RunError asking for its new path."""
    recorded = saved["train"].get("data")
    if flags["data"] == recorded and recorded is not None and not os.path.lexists(recorded):
        raise RunError(f"this run's data {recorded} is gone (in {run.settings_path}, sha256 "
                       f"{saved['data_sha256']}): if it moved, give its new path with --data")


def _same_data(flags, saved, run, data_sha256):
    """A resumed run's data is matched by its bytes (a store by its manifest's), not its path:
    --data NEW_PATH continues a run whose data moved; other bytes are refused."""
    if data_sha256 != saved["data_sha256"]:
        raise RunError(f"the data {_data_name(flags['data'])} has sha256 {data_sha256}, but this run trained "
                       f"on {_data_name(saved['train'].get('data'))} with sha256 {saved['data_sha256']} (in "
                       f"{run.settings_path}): resume with the same bytes, or start a new run with another --out")


def _data_name(data):
    return data or "the bundled the-verdict.txt"


def training_data(flags, saved, run, tokenizer, special, context, vocab_size):
    """(train loader, validation loader, data sha256) of --data, checked before training starts;
    a resumed run's (``saved``) must be the data it trained on, and every id must be one of the
    model's ``vocab_size`` (a small model from --init may have fewer than its tokenizer).

    --data is a text file (default the bundled the-verdict.txt; split at --train-ratio of its
    characters), a token store directory (numgpt prepare; its manifest's sha256 names it) or a
    directory of other tools' token files (nanoGPT, llm.c, Megatron; sha256 over their bytes).
    Either way the windows are read on demand; the training windows are shuffled per epoch by
    the run's generator, or drawn at random offsets with --sampling random."""
    if saved is not None:
        _recorded_data_present(flags, saved, run)
    path = None if flags["data"] is None else Path(flags["data"])
    if path is not None and path.is_dir():
        if (path / MANIFEST).is_file():
            store = TokenStore(path)
            _check_store_tokenizer(store, tokenizer)
            if store.n_vocab > vocab_size:
                raise UsageError(f"{store.manifest_path}: its ids come from {store.manifest['tokenizer']['name']} "
                                 f"({store.n_vocab} ids), more than the model's vocab_size {vocab_size}: train a "
                                 f"model of at least {store.n_vocab} ids on it")
            splits, data_sha256 = {split: store.split(split) for split in ("train", "val")}, store.manifest_sha256
        elif holds_token_files(path):
            splits, data_sha256 = open_token_files(path, min(tokenizer.n_vocab, vocab_size))
        else:
            raise UsageError(f"--data {path}: a directory with neither a token store ({MANIFEST}) nor *train*.bin "
                             f"token files; make a store with numgpt prepare SOURCE... --out DIR")
        if saved is not None:
            _same_data(flags, saved, run, data_sha256)
        train_set = TokenWindows(splits["train"], context, context, what=f"the training split of {path}")
        val_set = TokenWindows(splits["val"], context, context, what=f"the validation split of {path}")
    else:
        text, data_sha256 = _read_corpus(flags["data"])
        if saved is not None:
            _same_data(flags, saved, run, data_sha256)
        train_text, val_text = split_text(text, flags["train_ratio"])
        with _naming_the_split("training", flags, context):
            train_set = GPTDatasetV1(train_text, tokenizer, context, context, special)
        with _naming_the_split("validation", flags, context):
            val_set = GPTDatasetV1(val_text, tokenizer, context, context, special)
        _ids_in_vocabulary(flags, tokenizer, (train_set, val_set), vocab_size)
    if flags["sampling"] == "random":
        train_loader = RandomWindowLoader(train_set.tokens, context, flags["batch_size"])
    else:
        train_loader = DataLoader(train_set, batch_size=flags["batch_size"], shuffle=True, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=flags["batch_size"], shuffle=False, drop_last=False)
    return train_loader, val_loader, data_sha256


def _ids_in_vocabulary(flags, tokenizer, datasets, vocab_size):
    """UsageError when the tokenized text holds an id the model's embedding has no row for."""
    largest = max(int(part.max()) for dataset in datasets for part in dataset.tokens.parts)
    if largest >= vocab_size:
        raise UsageError(f"{_data_name(flags['data'])}: {tokenizer.name} gives token id {largest} "
                         f"({tokenizer.decode([largest])!r}), outside the model's vocab_size {vocab_size} "
                         f"(expected ids in [0, {vocab_size})): train it on token files or a store in its own "
                         f"vocabulary")


def store_vocabulary(flags, cfg, tokenizer_dir):
    """(cfg, tokenizer directory) of a new run from random weights on a token store that has a tokenizer
    of its own (numgpt prepare --tokenizer-train): that tokenizer, and the model's vocab_size its size."""
    store = None if flags["data"] is None else Path(flags["data"])
    own = None if store is None or not (store / MANIFEST).is_file() else store / TOKENIZER_DIR
    if flags["init"] or tokenizer_dir is not None or own is None or not (own / "tokenizer.json").is_file():
        return cfg, tokenizer_dir
    return dict(cfg, vocab_size=HFTokenizer(own).n_vocab), own


def _check_store_tokenizer(store, tokenizer):
    """UsageError unless the run's tokenizer is the one the store was made with."""
    recorded = store.manifest["tokenizer"]
    own = recorded["files"].get("tokenizer.json")
    if own is None and not isinstance(tokenizer, HFTokenizer):
        return                                              # GPT-2's bundled tokenizer on both sides
    if own is not None and isinstance(tokenizer, HFTokenizer):
        actual = safe_io.sha256_file(tokenizer.directory / "tokenizer.json")
        if actual == own:
            return
    raise UsageError(f"{store.manifest_path} was made with the tokenizer {recorded['name']} "
                     f"({'tokenizer.json sha256 ' + own if own else 'GPT-2, bundled'}) but this run tokenizes "
                     f"with {tokenizer.name}: train with the store's tokenizer (--tokenizer {store.directory})")



@contextlib.contextmanager
def _naming_the_split(split, flags, context):
    """A split too short for one window becomes a UsageError naming the split, its tokens and the
    flags that would help."""
    try:
        yield
    except TooFewTokens as short:
        ratio = flags["train_ratio"]
        if split == "training":
            share, more = f"the first {ratio:.0%}", "a larger"
        else:
            share, more = f"the last {1 - ratio:.0%}", "a smaller"
        data = flags["data"] or "the bundled the-verdict.txt"
        raise UsageError(f"the {split} split of {data} ({share} of its characters, --train-ratio {ratio:g}) has "
                         f"{short.n_tokens} tokens, and one window of --context-length {context} needs "
                         f"{context + 1}: give {more} --train-ratio, a smaller --context-length or a longer "
                         f"text") from None
