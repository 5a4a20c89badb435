"""A token store: a corpus tokenized once, kept on disk, memory-mapped for training.

    DIR/
      manifest.json          what the store holds (below); written last: no manifest, no store
      train-00000.bin        raw little-endian token ids, uint16 when the vocabulary fits, else uint32
      train-00000.docs       uint64 little-endian: where each document starts in the shard, then its length
      val-00000.bin, val-00000.docs
      tokenizer/             the tokenizer.json (and its companions) the store was made with, when not GPT-2's

The token stream of a split is its documents joined by the tokenizer's end-of-text id (a
separator: a split of one document holds exactly that document's tokens, so a store of the
seed's the-verdict.txt trains as ``--data the-verdict.txt`` does). A shard never splits a
document; a shard's ``.docs`` holds ``documents + 1`` offsets, the first 0 and the last the
shard's token count.

manifest.json::

    {"format": "numgpt-token-store", "version": 1,
     "tokenizer": {"name", "n_vocab", "eot_id", "files": {name: sha256}},
     "dtype": "uint16" | "uint32", "documents": N,
     "splits": {"train": {"shards": [{"tokens", "tokens_sha256", "docs", "docs_sha256",
                                      "n_tokens", "n_documents"}, ...]}, "val": {...}},
     "validation": {"how": ..., ...},
     "sources": [{"path", "bytes", "sha256"}, ...]}

``TokenStore(DIR)`` checks every file against the manifest before a token is read (sizes,
offsets, ids below the vocabulary; sha256 with ``verify=True``) and raises ``StoreError``
naming the file and the byte offset of the first thing wrong. ``split(name)`` is a
``TokenSequence``: the shards memory-mapped read-only, one stream.
"""
import hashlib
import os
from pathlib import Path

import numpy

from numgpt import safe_write
from numgpt.errors import NumgptError
from numgpt.io import safe_io

FORMAT = "numgpt-token-store"
VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val")
DTYPES = {"uint16": numpy.dtype("<u2"), "uint32": numpy.dtype("<u4")}
OFFSET_DTYPE = numpy.dtype("<u8")
SCAN_BYTES = 1 << 24          # ids are checked 16 MiB at a time: memory stays flat whatever the store's size


class StoreError(NumgptError, ValueError):
    """A token file or store that does not hold what it should; names the file and the offset."""


def token_dtype(n_vocab):
    """uint16 when every id fits in 16 bits, else uint32."""
    return "uint16" if n_vocab <= 1 << 16 else "uint32"


def shard_names(split, index):
    """(tokens file, document offsets file) of shard ``index`` of ``split``."""
    return f"{split}-{index:05d}.bin", f"{split}-{index:05d}.docs"


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- one stream over shards


class TokenSequence:
    """Token arrays (memory-mapped shards, or one in-memory array) read as one stream.

    ``gather(starts, length)`` -> (B, length) int64: the tokens at ``starts[b] + range(length)``;
    only those are read (a memory map pages in what is touched)."""

    def __init__(self, parts):
        self.parts = [part for part in parts if len(part)]
        self.bounds = numpy.cumsum([0] + [len(part) for part in self.parts])  # (P + 1,) stream offsets

    def __len__(self):
        return int(self.bounds[-1])

    def gather(self, starts, length):
        starts = numpy.asarray(starts, dtype=numpy.int64)  # (B,)
        if len(self.parts) == 1:
            return self.parts[0][starts[:, None] + numpy.arange(length)].astype(numpy.int64)  # (B, length)
        out = numpy.empty((len(starts), length), dtype=numpy.int64)  # (B, length)
        for row, start in enumerate(starts):
            out[row] = self.slice(int(start), int(start) + length)
        return out

    def slice(self, begin, end):
        """Tokens [begin, end) of the stream as one int64 array, across shard borders."""
        pieces, position = [], begin
        while position < end:
            part = int(numpy.searchsorted(self.bounds, position, side="right")) - 1
            offset = position - int(self.bounds[part])
            take = min(end, int(self.bounds[part + 1])) - position
            pieces.append(self.parts[part][offset:offset + take])
            position += take
        return numpy.concatenate(pieces).astype(numpy.int64) if pieces else numpy.empty(0, numpy.int64)


def map_tokens(path, dtype, offset=0, count=None):
    """The ids in ``path`` from byte ``offset`` as a read-only memory map (an empty array for none)."""
    dtype = numpy.dtype(dtype)
    if count is None:
        count = (os.path.getsize(path) - offset) // dtype.itemsize
    if count == 0:
        return numpy.empty(0, dtype)
    return numpy.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def scan_ids(path, dtype, n_vocab, offset=0, digest=None):
    """StoreError at the first id >= ``n_vocab`` (or < 0) in ``path`` from byte ``offset``, read in
    fixed-size blocks (the whole file never sits in memory); ``digest`` (a hashlib object) is fed
    every byte of the file, header included."""
    dtype = numpy.dtype(dtype)
    block = SCAN_BYTES - SCAN_BYTES % dtype.itemsize
    with safe_io.open_regular(path) as f:
        head = f.read(offset)
        if digest is not None:
            digest.update(head)
        position = offset
        while data := f.read(block):
            if digest is not None:
                digest.update(data)
            ids = numpy.frombuffer(data, dtype=dtype, count=len(data) // dtype.itemsize)
            if ids.size and (ids.max() >= n_vocab or (dtype.kind == "i" and ids.min() < 0)):  # rare: then where
                bad = numpy.flatnonzero((ids >= n_vocab) | (ids < 0))
                at = position + int(bad[0]) * dtype.itemsize
                raise StoreError(f"{path}: token id {int(ids[bad[0]])} at byte offset {at} is outside the "
                                 f"vocabulary of {n_vocab} ids (expected ids in [0, {n_vocab}))")
            position += len(data)


# ---------------------------------------------------------------- the manifest


def _field(mapping, key, kind, where):
    """``mapping[key]`` if it is a ``kind``, else StoreError naming ``where``."""
    if not isinstance(mapping, dict):
        raise StoreError(f"{where}: expected a JSON object, got {type(mapping).__name__}")
    value = mapping.get(key)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is int and ok and value < 0:
        ok = False
    if not ok:
        raise StoreError(f"{where}: field {key!r} is {value!r}; expected a "
                         f"{'non-negative integer' if kind is int else kind.__name__}")
    return value


def _sha(mapping, key, where):
    value = _field(mapping, key, str, where)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise StoreError(f"{where}: field {key!r} is {value!r}; expected a sha256 (64 lowercase hex digits)")
    return value


def check_manifest(manifest, path):
    """StoreError unless ``manifest`` (parsed JSON) is a store manifest numgpt can read."""
    where = str(path)
    if _field(manifest, "format", str, where) != FORMAT:
        raise StoreError(f"{where}: format is {manifest['format']!r}; expected {FORMAT!r}")
    if _field(manifest, "version", int, where) != VERSION:
        raise StoreError(f"{where}: version {manifest['version']} is not one numgpt reads (expected {VERSION})")
    dtype = _field(manifest, "dtype", str, where)
    if dtype not in DTYPES:
        raise StoreError(f"{where}: dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    tokenizer = _field(manifest, "tokenizer", dict, where)
    _field(tokenizer, "name", str, f"{where} tokenizer")
    n_vocab = _field(tokenizer, "n_vocab", int, f"{where} tokenizer")
    if n_vocab < 1 or n_vocab > numpy.iinfo(DTYPES[dtype]).max + 1:
        raise StoreError(f"{where}: n_vocab {n_vocab} does not fit dtype {dtype}")
    for name in _field(tokenizer, "files", dict, f"{where} tokenizer"):
        if "/" in name or "\\" in name or name.startswith("."):
            raise StoreError(f"{where}: tokenizer file name {name!r} is not a plain file name")
        _sha(tokenizer["files"], name, f"{where} tokenizer files")
    _field(manifest, "documents", int, where)
    _field(manifest, "validation", dict, where)
    for i, source in enumerate(_field(manifest, "sources", list, where)):
        _field(source, "path", str, f"{where} sources[{i}]")
        _field(source, "bytes", int, f"{where} sources[{i}]")
        _sha(source, "sha256", f"{where} sources[{i}]")
    splits = _field(manifest, "splits", dict, where)
    for split in SPLITS:
        shards = _field(_field(splits, split, dict, f"{where} splits"), "shards", list, f"{where} splits.{split}")
        for i, shard in enumerate(shards):
            at = f"{where} splits.{split}.shards[{i}]"
            tokens, docs = shard_names(split, i)
            if _field(shard, "tokens", str, at) != tokens or _field(shard, "docs", str, at) != docs:
                raise StoreError(f"{at}: files {shard.get('tokens')!r}, {shard.get('docs')!r}; expected "
                                 f"{tokens!r}, {docs!r}")
            _sha(shard, "tokens_sha256", at)
            _sha(shard, "docs_sha256", at)
            _field(shard, "n_tokens", int, at)
            _field(shard, "n_documents", int, at)
        for total in ("n_tokens", "n_documents"):
            if total in splits[split] and splits[split][total] != sum(shard[total] for shard in shards):
                raise StoreError(f"{where} splits.{split}: {total} {splits[split][total]!r} is not the sum of its "
                                 f"shards' ({sum(shard[total] for shard in shards)})")
    return manifest


# ---------------------------------------------------------------- reading


class TokenStore:
    """A token store directory, checked (see the module docstring), its splits memory-mapped."""

    def __init__(self, directory, verify=False):
        self.directory = Path(directory)
        self.manifest_path = self.directory / MANIFEST
        try:
            data = self.manifest_path.read_bytes()
        except OSError as error:
            raise StoreError(f"{self.manifest_path}: cannot be read: {error.strerror or error} (expected a token "
                             f"store written by numgpt prepare)") from None
        self.manifest_sha256 = sha256_bytes(data)
        try:
            manifest = safe_io.parse_json(data, self.manifest_path)
        except safe_io.UnsafeFileError as error:
            raise StoreError(str(error)) from None
        self.manifest = check_manifest(manifest, self.manifest_path)
        self.dtype = DTYPES[manifest["dtype"]]
        self.n_vocab = manifest["tokenizer"]["n_vocab"]
        self.eot_id = manifest["tokenizer"].get("eot_id")
        self._splits = {split: self._open_split(split, verify) for split in SPLITS}

    @property
    def tokenizer_dir(self):
        """The store's own tokenizer directory, or None when it was made with GPT-2's bundled one."""
        return self.directory / TOKENIZER_DIR if self.manifest["tokenizer"]["files"] else None

    def split(self, name):
        """The split's tokens (``train`` or ``val``), one TokenSequence over its memory-mapped shards."""
        return self._splits[name]

    def _open_split(self, split, verify):
        parts = []
        for shard in self.manifest["splits"][split]["shards"]:
            tokens_path, docs_path = self.directory / shard["tokens"], self.directory / shard["docs"]
            self._check_docs(docs_path, shard, verify)
            _check_size(tokens_path, shard["n_tokens"] * self.dtype.itemsize, f"{shard['n_tokens']} {self.dtype} ids")
            digest = hashlib.sha256() if verify else None
            scan_ids(tokens_path, self.dtype, self.n_vocab, digest=digest)
            if verify and digest.hexdigest() != shard["tokens_sha256"]:
                raise StoreError(f"{tokens_path}: sha256 {digest.hexdigest()} disagrees with the manifest's "
                                 f"{shard['tokens_sha256']} ({self.manifest_path})")
            parts.append(map_tokens(tokens_path, self.dtype, count=shard["n_tokens"]))
        return TokenSequence(parts)

    def _check_docs(self, path, shard, verify):
        n_docs = shard["n_documents"]
        _check_size(path, (n_docs + 1) * OFFSET_DTYPE.itemsize, f"{n_docs + 1} uint64 document offsets")
        data = path.read_bytes()
        if verify and sha256_bytes(data) != shard["docs_sha256"]:
            raise StoreError(f"{path}: sha256 {sha256_bytes(data)} disagrees with the manifest's "
                             f"{shard['docs_sha256']} ({self.manifest_path})")
        offsets = numpy.frombuffer(data, dtype=OFFSET_DTYPE)
        steps = numpy.diff(offsets)          # a decrease wraps around to a huge uint64 step
        if offsets[0] != 0 or offsets[-1] != shard["n_tokens"] or (steps.size and (steps > shard["n_tokens"]).any()):
            bad = 0 if offsets[0] != 0 else (len(offsets) - 1 if offsets[-1] != shard["n_tokens"]
                                             else int(numpy.flatnonzero(steps > shard["n_tokens"])[0]) + 1)
            raise StoreError(f"{path}: document offset {int(offsets[bad])} at byte offset {bad * 8} is not an "
                             f"increasing offset from 0 to the shard's {shard['n_tokens']} tokens")


def _check_size(path, expected, what):
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise StoreError(f"{path}: cannot be read: {error.strerror or error}") from None
    if size != expected:
        raise StoreError(f"{path}: {size} bytes, {'truncated' if size < expected else 'oversized'} at byte offset "
                         f"{min(size, expected)}: expected {expected} bytes ({what})")


# ---------------------------------------------------------------- writing


def write_atomically(path, data):
    """``data`` (bytes) into ``path`` as one fsynced rename: whole or not at all."""
    safe_write.atomic_write(path, lambda fh: fh.write(data))


def offsets_bytes(offsets):
    return numpy.asarray(offsets, dtype=OFFSET_DTYPE).tobytes()
