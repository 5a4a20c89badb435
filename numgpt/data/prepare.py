"""``numgpt prepare``: tokenize a corpus once into a token store (numgpt.data.token_store).

Sources, in the order given (a directory's and a glob's files sorted by path):
- a text file: one document (UTF-8; newlines normalised as ``read_text`` does);
- a directory: every ``.txt``, ``.jsonl``, ``.jsonl.gz`` and ``.parquet`` file under it, recursively;
- a glob (``books/*.txt``);
- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line, its ``--text-field`` a document;
- ``.parquet`` (pyarrow, optional): the ``--text-field`` column, read a row group at a time;
- with the ``datasets`` library (optional): a dataset directory written by ``save_to_disk``
  (memory-mapped Arrow files; its sha256 is over those files), or a Hugging Face hub dataset id
  (``owner/name``), streamed, never loaded whole (identified by its id and ``--split``, not its
  bytes, which a stream does not see before it ends); ``--split`` (default ``train``).

The validation split takes whole documents: the first ``--val-docs N``, or (``--val-fraction f``)
document i whenever ``floor((i + 1) f) > floor(i f)``, spread evenly through the corpus. A corpus
that is one text file is one document: it is split as the seed splits its text, the first
``--train-ratio`` of its characters for training (``numgpt.data.datasets.split_text``).

Documents are encoded by ``--workers`` processes a chunk at a time, in order; at most two
chunks per worker are in flight, so memory is bounded by the chunk size and the largest
document's text, not by the corpus. With GPT-2's tokenizer a document longer than a chunk is
encoded in pieces, cut at spaces where GPT-2's pre-tokenizer cuts anyway (``pieces``), so its ids
are those of the whole; a tokenizer.json tokenizer gets each document whole.

A shard is written as a partial file, fsynced, renamed when full;
after each rename ``.prepare-state.json`` records where the corpus stands, and an interrupted
prepare started again with the same inputs carries on from there. The same inputs give the same
bytes, whatever ``--workers``.
"""
import collections
import glob
import gzip
import json
import math
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

import numpy

from numgpt import safe_write
from numgpt.data import token_store
from numgpt.data.datasets import DataError, split_text
from numgpt.data.token_store import MANIFEST, TOKENIZER_DIR
from numgpt.errors import UsageError
from numgpt.io import bundled, safe_io
from numgpt.io.families import TOKENIZER_FILES, get_tokenizer, tokenizer_directory
from numgpt.io.tokenizer import ENDOFTEXT, get_tokenizer as gpt2_tokenizer

STATE_FILE = ".prepare-state.json"
DIRECTORY_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
CHUNK_CHARS = 1 << 22            # text handed to a worker at a time (4 Mi characters)
DEFAULT_SHARD_TOKENS = 100_000_000   # llm.c's shard size


class PrepareError(UsageError):
    """Sources or an output directory that ``numgpt prepare`` cannot use."""


# ---------------------------------------------------------------- sources


class DatasetSource:
    """A Hugging Face dataset: a ``save_to_disk`` directory or a hub id, read through ``datasets``."""

    def __init__(self, name, local):
        self.name, self.local = str(name), local

    def __str__(self):
        return self.name


def _is_saved_dataset(path):
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _kind(path):
    if isinstance(path, DatasetSource):
        return "datasets"
    name = path.name.lower()
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def resolve_sources(specs):
    """[Path] of the files that SOURCE arguments name, in order (see the module docstring)."""
    files = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir() and _is_saved_dataset(path):
            found = [DatasetSource(path, local=True)]
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and p.name.lower().endswith(DIRECTORY_SUFFIXES))
            if not found:
                raise PrepareError(f"{spec}: a directory with no {', '.join(DIRECTORY_SUFFIXES)} files")
        elif path.is_file():
            found = [path]
        elif glob.has_magic(str(spec)):
            matches = glob.glob(os.path.expanduser(str(spec)), recursive=True)
            found = sorted(Path(p) for p in matches if Path(p).is_file())
            if not found:
                raise PrepareError(f"{spec}: the pattern matches no file")
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", str(spec)):
            found = [DatasetSource(spec, local=False)]
        else:
            raise PrepareError(f"{spec}: no such file or directory (nor a hub dataset id owner/name)")
        files.extend(found)
    return files


def describe_sources(files, split):
    """The manifest's record of the sources: path, size, sha256 (read in blocks)."""
    return [_describe_dataset(path, split) if isinstance(path, DatasetSource) else
            {"path": str(path), "bytes": path.stat().st_size, "sha256": safe_io.sha256_file(path)} for path in files]


def _describe_dataset(source, split):
    """A saved dataset: its files' sizes and one sha256 over their names and sha256s; a hub id: its name."""
    if not source.local:
        return {"path": source.name, "split": split, "bytes": 0,
                "sha256": token_store.sha256_bytes(f"{source.name}\0{split}".encode())}
    files = sorted(p for p in Path(source.name).rglob("*") if p.is_file())
    listing = "".join(f"{p.relative_to(source.name)}\0{safe_io.sha256_file(p)}\n" for p in files)
    return {"path": source.name, "split": split, "bytes": sum(p.stat().st_size for p in files),
            "sha256": token_store.sha256_bytes(listing.encode())}


def _dataset_documents(source, field, split):
    try:
        import datasets  # optional: only for Hugging Face dataset sources
    except ImportError:
        raise PrepareError(f"{source}: reading a Hugging Face dataset needs the datasets library "
                           f"(pip install datasets)") from None
    if source.local:
        dataset = datasets.load_from_disk(source.name)            # memory-mapped Arrow, not read whole
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise DataError(f"{source}: no split {split!r} (splits: {', '.join(dataset)}); choose it with --split")
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(source.name, split=split, streaming=True)
    names = dataset.column_names
    if names is not None and field not in names:
        raise DataError(f"{source}: no column {field!r} (columns: {', '.join(names)}); choose it with --text-field")
    for batch in dataset.iter(batch_size=1024):
        for text in batch[field]:
            if not isinstance(text, str):
                raise DataError(f"{source}: column {field!r} holds a {type(text).__name__}, expected text")
            yield text


def _decode(data, path):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text: byte offset {error.start} cannot be decoded") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _jsonl_documents(path, field, opener):
    with opener(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DataError(f"{path} line {number}: not a JSON object: {error}") from None
            text = record.get(field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(f"{path} line {number}: no text field {field!r} (a string) in this record; "
                                f"choose the field with --text-field")
            yield text


def _parquet_documents(path, field):
    try:
        import pyarrow.parquet  # optional: only for .parquet sources
    except ImportError:
        raise PrepareError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        parquet = pyarrow.parquet.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid and OSError alike for a bad file  # noqa: BLE001
        raise DataError(f"{path}: not a parquet file pyarrow can read: {error}") from None
    if field not in parquet.schema_arrow.names:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(parquet.schema_arrow.names)}); "
                        f"choose it with --text-field")
    for batch in parquet.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                raise DataError(f"{path}: column {field!r} holds a {type(text).__name__}, expected text")
            yield text


def documents(files, text_field, split="train"):
    """Every document's text, in order: a text file is one, a jsonl line one, a parquet row one."""
    for path in files:
        kind = _kind(path)
        if kind == "text":
            yield _decode(path.read_bytes(), path)
        elif kind == "datasets":
            yield from _dataset_documents(path, text_field, split)
        elif kind == "parquet":
            yield from _parquet_documents(path, text_field)
        else:
            yield from _jsonl_documents(path, text_field, gzip.open if kind == "jsonl.gz" else open)


def in_validation(index, val_docs, val_fraction):
    """Whether document ``index`` goes to the validation split (the module docstring's rule)."""
    if val_docs is not None:
        return index < val_docs
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


def assigned_documents(files, options):
    """(split, text) for every document of the corpus; the one-document corpus split by characters."""
    if len(files) == 1 and _kind(files[0]) == "text":
        train_text, val_text = split_text(_decode(files[0].read_bytes(), files[0]), options["train_ratio"])
        yield "train", train_text
        yield "val", val_text
        return
    for index, text in enumerate(documents(files, options["text_field"], options["split"])):
        yield ("val" if in_validation(index, options["val_docs"], options["val_fraction"]) else "train"), text


# ---------------------------------------------------------------- encoding (in the workers)

_worker = {}


def _start_worker(tokenizer_source, allow_special, dtype):
    _worker.update(tokenizer=get_tokenizer(tokenizer_source), allow_special=allow_special, dtype=dtype)


def encode_texts(texts):
    """[ids array of the worker's dtype] for ``texts``, special-token text ordinary unless allowed."""
    tokenizer, dtype = _worker["tokenizer"], numpy.dtype(_worker["dtype"])
    if hasattr(tokenizer, "encode_ordinary_batch") and not _worker["allow_special"]:
        encoded = tokenizer.encode_ordinary_batch(texts, num_threads=1)
    elif hasattr(tokenizer, "encode_ordinary_batch"):
        encoded = [tokenizer.encode(text, allowed_special="all") for text in texts]
    else:
        special = tokenizer.special_tokens_set if _worker["allow_special"] else ()
        encoded = [tokenizer.encode(text, allowed_special=special, disallowed_special=(), add_special_tokens=False)
                   for text in texts]
    return [numpy.asarray(ids, dtype=dtype) for ids in encoded]


# GPT-2's pre-tokenizer never joins across a space that follows a non-space and precedes a letter: the
# token before ends there and " letter..." starts the next. Cutting a long document at such spaces
# gives the ids of the whole document, in pieces of bounded size.
GPT2_SAFE_CUT = re.compile(r"(?<=\S) (?=[^\W\d_])")


def pieces(text, size):
    """``text`` in pieces of about ``size`` characters, cut only at GPT2_SAFE_CUT spaces."""
    start = 0
    while len(text) - start > size:
        cut = GPT2_SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start:cut.start()]
        start = cut.start()
    yield text[start:]


def _chunks(items, skip, cut_long):
    """Lists of (item index, split, text, first piece, last piece) of about CHUNK_CHARS characters,
    from item ``skip`` on; empty texts dropped; with ``cut_long``, a longer document in pieces."""
    chunk, size = [], 0
    for index, (split, text) in enumerate(items):
        if index < skip or not text:
            continue
        parts = list(pieces(text, CHUNK_CHARS)) if cut_long and len(text) > CHUNK_CHARS else [text]
        for number, part in enumerate(parts):
            chunk.append((index, split, part, number == 0, number == len(parts) - 1))
            size += len(part)
            if size >= CHUNK_CHARS:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


def encoded_chunks(chunks, workers, tokenizer_source, allow_special, dtype):
    """(chunk, [ids]) in order, encoded by ``workers`` processes (in this one for 1), at most 2 per worker ahead."""
    if workers == 1:
        _start_worker(tokenizer_source, allow_special, dtype)
        for chunk in chunks:
            yield chunk, encode_texts([entry[2] for entry in chunk])
        return
    with multiprocessing.get_context().Pool(workers, _start_worker, (tokenizer_source, allow_special, dtype)) as pool:
        pending = collections.deque()
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(encode_texts, ([entry[2] for entry in chunk],))))
            if len(pending) >= 2 * workers:
                chunk, result = pending.popleft()
                yield chunk, result.get()
        while pending:
            chunk, result = pending.popleft()
            yield chunk, result.get()


# ---------------------------------------------------------------- writing


class SplitWriter:
    """The shards of one split: documents appended to a partial shard, renamed when full."""

    def __init__(self, directory, split, dtype, eot_id, shard_tokens, state=None):
        self.directory, self.split, self.dtype = directory, split, numpy.dtype(dtype)
        self.eot = numpy.asarray([eot_id], dtype=self.dtype)
        self.shard_tokens = shard_tokens
        state = state or {"shards": [], "tokens": 0, "offsets": [0], "documents": 0}
        self.shards, self.documents = state["shards"], state["documents"]
        self.offsets = state["offsets"]               # (documents in the partial shard + 1,) token offsets
        self.tokens = state["tokens"]                 # tokens in the partial shard
        self.partial = directory / f".{token_store.shard_names(split, len(self.shards))[0]}.partial"
        final = directory / token_store.shard_names(split, len(self.shards))[0]
        if not self.partial.exists() and final.exists():  # renamed, but stopped before the state recorded it
            os.replace(final, self.partial)
        self.file = self._open_partial()
        self.file.truncate(state["tokens"] * self.dtype.itemsize)
        self.file.seek(state["tokens"] * self.dtype.itemsize)

    def add(self, ids, first=True, last=True):
        """Append one document, or one piece of it; True when its last piece filled a shard (then
        written and renamed: a shard ends at a document's end)."""
        if first and self.documents:
            self.file.write(self.eot.tobytes())    # documents are joined by end-of-text
            self.tokens += 1
        self.file.write(ids.tobytes())
        self.tokens += len(ids)
        if not last:
            return False
        self.offsets.append(self.tokens)
        self.documents += 1
        if self.tokens >= self.shard_tokens:
            self.commit()
            return True
        return False

    def commit(self):
        """Rename the partial shard to its final name with its document offsets beside it."""
        if len(self.offsets) == 1:
            return
        tokens_name, docs_name = token_store.shard_names(self.split, len(self.shards))
        self.sync()
        self.file.close()
        docs = token_store.offsets_bytes(self.offsets)
        token_store.write_atomically(self.directory / docs_name, docs)
        os.replace(self.partial, self.directory / tokens_name)
        safe_write.fsync_path(self.directory)
        self.shards.append({"tokens": tokens_name, "tokens_sha256": safe_io.sha256_file(self.directory / tokens_name),
                            "docs": docs_name, "docs_sha256": token_store.sha256_bytes(docs),
                            "n_tokens": self.offsets[-1], "n_documents": len(self.offsets) - 1})
        self.offsets, self.tokens = [0], 0
        self.partial = self.directory / f".{token_store.shard_names(self.split, len(self.shards))[0]}.partial"
        self.file = self._open_partial()
        self.file.truncate(0)

    def _open_partial(self):
        """The partial shard for reading and writing, created when missing, never through a link."""
        return os.fdopen(safe_write.open_existing_or_new(self.partial, os.O_RDWR), "r+b")

    def sync(self):
        self.file.flush()
        os.fsync(self.file.fileno())

    def state(self):
        return {"shards": self.shards, "tokens": self.offsets[-1], "offsets": self.offsets,
                "documents": self.documents}

    def close(self):
        self.file.close()
        if self.partial.exists():
            self.partial.unlink()


def _tokenizer_identity(tokenizer_source, out):
    """(its tokenizer.json directory or None for GPT-2's, the manifest's record of the tokenizer); a
    tokenizer.json and its companions are copied into OUT/tokenizer/."""
    directory = None if tokenizer_source is None else tokenizer_directory(tokenizer_source)
    if directory is None:
        tokenizer = gpt2_tokenizer()
        files = {"encoder.json": bundled.SHA256[bundled.GPT2_ENCODER_JSON]}
    else:
        tokenizer = get_tokenizer(directory)
        safe_write.own_directory(out / TOKENIZER_DIR)
        files = {}
        for name in TOKENIZER_FILES:
            if (Path(directory) / name).is_file():
                data = (Path(directory) / name).read_bytes()
                if (out / TOKENIZER_DIR / name) != (Path(directory) / name):
                    token_store.write_atomically(out / TOKENIZER_DIR / name, data)
                files[name] = token_store.sha256_bytes(data)
    if tokenizer.eot_token is None:
        raise PrepareError(f"the tokenizer {tokenizer.name} has no end-of-text token to join documents with")
    return directory, {"name": tokenizer.name, "n_vocab": tokenizer.n_vocab, "eot_id": tokenizer.eot_token,
                       "files": files}


def train_tokenizer(files, options, out, vocab_size):
    """A byte-level BPE of ``vocab_size`` ids trained on the sources (tokenizers library), with
    <|endoftext|> as its special end-of-text token, saved in OUT/tokenizer/; returns that directory."""
    # tokenizers' trainer: only for --tokenizer-train
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator((text for _, text in assigned_documents(files, options)), trainer=trainer)
    directory = safe_write.own_directory(out / TOKENIZER_DIR)
    token_store.write_atomically(directory / "tokenizer.json", tokenizer.to_str().encode())
    token_store.write_atomically(directory / "tokenizer_config.json",
                                 json.dumps({"eos_token": ENDOFTEXT, "bos_token": ENDOFTEXT}).encode())
    return directory


def prepare(sources, out, tokenizer=None, workers=None, shard_tokens=DEFAULT_SHARD_TOKENS, val_fraction=0.1,
            val_docs=None, train_ratio=0.9, text_field="text", allow_special=False, progress=None,
            train_vocab_size=None, split="train"):
    """Tokenize ``sources`` into the token store ``out``; returns its manifest. See the module docstring."""
    out = Path(out)
    if (out / MANIFEST).exists():
        raise PrepareError(f"{out} already holds a token store ({MANIFEST}); choose another --out")
    if not 0.0 <= val_fraction < 1.0:
        raise PrepareError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise PrepareError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    files = resolve_sources(sources)
    safe_write.own_directory(out)
    safe_write.remove_stale_temporaries(out)             # a killed run's half-written files
    options = {"train_ratio": train_ratio, "val_docs": val_docs, "val_fraction": val_fraction,
               "text_field": text_field, "split": split}
    described = describe_sources(files, split)
    state_path = out / STATE_FILE
    saved = safe_io.read_json(state_path) if state_path.exists() else None
    if train_vocab_size is not None and not (saved and (out / TOKENIZER_DIR / "tokenizer.json").is_file()):
        tokenizer = train_tokenizer(files, options, out, train_vocab_size)
    elif train_vocab_size is not None:
        tokenizer = out / TOKENIZER_DIR
    tokenizer_dir, tokenizer_record = _tokenizer_identity(tokenizer, out)
    dtype = token_store.token_dtype(tokenizer_record["n_vocab"])
    settings = {"sources": described, "tokenizer": tokenizer_record, "dtype": dtype, "shard_tokens": shard_tokens,
                "allow_special": allow_special, **options}
    if saved is not None and saved.get("settings") != settings:
        raise PrepareError(f"{out} holds an interrupted prepare of other sources or settings ({state_path}); "
                           f"finish it with the same arguments, or choose another --out")
    resume = saved["writers"] if saved else {}
    writers = {split: SplitWriter(out, split, dtype, tokenizer_record["eot_id"], shard_tokens, resume.get(split))
               for split in token_store.SPLITS}
    done = saved["items"] if saved else 0

    def record(items):
        for writer in writers.values():
            writer.sync()
        token_store.write_atomically(state_path, json.dumps(
            {"settings": settings, "items": items, "writers": {s: w.state() for s, w in writers.items()}}).encode())

    tokenizer_source = None if tokenizer_dir is None else str(tokenizer_dir)   # resolved once, here
    workers = workers or os.cpu_count() or 1
    chunks = _chunks(assigned_documents(files, options), done, cut_long=tokenizer_dir is None)
    total_bytes = sum(source["bytes"] for source in described)
    with ProgressBar(progress, total_bytes) as bar:
        for chunk, encoded in encoded_chunks(chunks, workers, tokenizer_source, allow_special, dtype):
            for (index, split, text, first, last), ids in zip(chunk, encoded):
                if writers[split].add(ids, first, last):
                    record(index + 1)
                bar.update(len(text), len(ids))
    for writer in writers.values():
        writer.commit()
        writer.close()
    one_text_file = len(files) == 1 and _kind(files[0]) == "text"
    n_documents = 1 if one_text_file else sum(w.documents for w in writers.values())
    if one_text_file:
        validation = {"how": "characters", "train_ratio": train_ratio}
    else:
        validation = {"how": "documents", "val_docs": val_docs,
                      "val_fraction": val_fraction if val_docs is None else None}
    manifest = {"format": token_store.FORMAT, "version": token_store.VERSION, "tokenizer": tokenizer_record,
                "dtype": dtype, "documents": n_documents,
                "splits": {s: {"shards": w.shards, "n_tokens": sum(x["n_tokens"] for x in w.shards),
                               "n_documents": w.documents} for s, w in writers.items()},
                "validation": validation, "allow_special": allow_special, "sources": described}
    token_store.write_atomically(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    state_path.unlink(missing_ok=True)
    return manifest


class ProgressBar:
    """tqdm's bar (MB/s, tokens/s, ETA) on a terminal; nothing elsewhere."""

    def __init__(self, show, total_bytes):
        self.show = sys.stderr.isatty() if show is None else show
        self.total = total_bytes
        self.tokens, self.start = 0, time.time()

    def __enter__(self):
        if self.show:
            # tqdm: only when a terminal shows the progress
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, unit="B", unit_scale=True, desc="prepare",
                            file=sys.stderr)
        return self

    def update(self, characters, tokens):
        self.tokens += tokens
        if self.show:
            self.bar.update(characters)
            self.bar.set_postfix_str(f"{self.tokens / max(time.time() - self.start, 1e-9):,.0f} tokens/s",
                                     refresh=False)

    def __exit__(self, *exc):
        if self.show:
            self.bar.close()
