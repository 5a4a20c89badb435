"""Token files other tools wrote, read for ``numgpt train --data``, each checked before training.

- nanoGPT (``data/*/prepare.py``): ``train.bin`` / ``val.bin``, raw little-endian uint16 ids
  (``numpy.array(ids, dtype=numpy.uint16).tofile``), no header.
- llm.c (``dev/data/data_common.py``, ``write_datafile``): a header of 256 little-endian int32
  (``[0]`` magic 20240520, ``[1]`` version: 1 for uint16 ids, 7 for uint32, ``[2]`` the token
  count), then the ids. A raw GPT-2 nanoGPT file never starts with the magic: its first uint16
  would be 59608, past GPT-2's 50257 ids.
- Megatron-LM (``MMapIndexedDataset``): ``PREFIX.bin`` holds the ids of every sequence one after
  the other; ``PREFIX.idx`` is ``b"MMIDIDX\\x00\\x00"``, ``<Q`` version 1, ``<B`` dtype code,
  ``<Q`` sequence count S, ``<Q`` document count D, then int32 sizes (S,), int64 byte pointers
  (S,) into the .bin, int64 document indices (D,).

``open_token_files(directory, n_vocab)`` finds the splits in a directory: the ``*train*.bin``
files for training and the ``*val*.bin`` files for validation, each of whichever format it is
(Megatron when a ``.idx`` lies beside it, llm.c when it starts with the magic, nanoGPT
otherwise), sorted by name and read as one stream. Every problem is a ``StoreError`` naming the
file and the byte offset.
"""
import hashlib
import os
import struct
from pathlib import Path

import numpy

from numgpt.data.token_store import StoreError, TokenSequence, map_tokens, scan_ids
from numgpt.io.safe_io import open_regular

LLMC_MAGIC = 20240520
LLMC_HEADER_INTS = 256
LLMC_HEADER_BYTES = LLMC_HEADER_INTS * 4
LLMC_VERSIONS = {1: numpy.dtype("<u2"), 7: numpy.dtype("<u4")}
NANOGPT_DTYPE = numpy.dtype("<u2")
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
MEGATRON_HEAD = struct.Struct("<9sQBQQ")   # magic, version, dtype code, sequences, documents
MEGATRON_DTYPES = {1: "u1", 2: "i1", 3: "<i2", 4: "<i4", 5: "<i8", 6: "<f8", 7: "<f4", 8: "<u2"}


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError as error:
        raise StoreError(f"{path}: cannot be read: {error.strerror or error}") from None


def read_llmc_header(path):
    """(dtype, token count) of an llm.c shard, its header checked against the file's size."""
    size = _size(path)
    with open_regular(path) as f:
        head = f.read(LLMC_HEADER_BYTES)
    if len(head) < LLMC_HEADER_BYTES:
        raise StoreError(f"{path}: {size} bytes, truncated at byte offset {size}: an llm.c shard starts with a "
                         f"{LLMC_HEADER_BYTES}-byte header")
    magic, version, count = struct.unpack_from("<3i", head)
    if magic != LLMC_MAGIC:
        raise StoreError(f"{path}: magic {magic} at byte offset 0; expected llm.c's {LLMC_MAGIC}")
    if version not in LLMC_VERSIONS:
        raise StoreError(f"{path}: version {version} at byte offset 4; expected 1 (uint16 ids) or 7 (uint32)")
    dtype = LLMC_VERSIONS[version]
    expected = LLMC_HEADER_BYTES + count * dtype.itemsize
    if count < 0 or size != expected:
        raise StoreError(f"{path}: the header (byte offset 8) says {count} tokens, {expected} bytes in all, but "
                         f"the file has {size} bytes ({'truncated' if size < expected else 'oversized'} at byte "
                         f"offset {min(size, max(expected, LLMC_HEADER_BYTES))})")
    return dtype, count


def read_megatron_index(path):
    """(dtype, sizes (S,), pointers (S,)) of a Megatron ``.idx``, checked: the pointers must be the
    running byte offsets of the sizes."""
    data = Path(path).read_bytes()
    if len(data) < MEGATRON_HEAD.size:
        raise StoreError(f"{path}: {len(data)} bytes, truncated at byte offset {len(data)}: a Megatron index "
                         f"starts with a {MEGATRON_HEAD.size}-byte header")
    magic, version, code, n_sequences, n_documents = MEGATRON_HEAD.unpack_from(data)
    if magic != MEGATRON_MAGIC:
        raise StoreError(f"{path}: magic {magic!r} at byte offset 0; expected Megatron's {MEGATRON_MAGIC!r}")
    if version != MEGATRON_VERSION:
        raise StoreError(f"{path}: version {version} at byte offset 9; expected {MEGATRON_VERSION}")
    if code not in MEGATRON_DTYPES or numpy.dtype(MEGATRON_DTYPES[code]).kind == "f":
        raise StoreError(f"{path}: dtype code {code} at byte offset 17; expected an integer type "
                         f"(1-5 or 8)")
    expected = MEGATRON_HEAD.size + n_sequences * 12 + n_documents * 8
    if len(data) != expected:
        raise StoreError(f"{path}: {len(data)} bytes, {'truncated' if len(data) < expected else 'oversized'} at "
                         f"byte offset {min(len(data), expected)}: the header (byte offset 18) says {n_sequences} "
                         f"sequences and {n_documents} documents, {expected} bytes")
    dtype = numpy.dtype(MEGATRON_DTYPES[code])
    at = MEGATRON_HEAD.size
    sizes = numpy.frombuffer(data, "<i4", n_sequences, at).astype(numpy.int64)
    pointers = numpy.frombuffer(data, "<i8", n_sequences, at + n_sequences * 4)
    running = numpy.concatenate([[0], numpy.cumsum(sizes)[:-1]]) * dtype.itemsize if n_sequences else sizes
    wrong = numpy.flatnonzero((sizes < 0) | (pointers != running))
    if wrong.size:
        i = int(wrong[0])
        raise StoreError(f"{path}: sequence {i} (size at byte offset {at + 4 * i}, pointer at byte offset "
                         f"{at + n_sequences * 4 + 8 * i}) has size {sizes[i]} and pointer {pointers[i]}; "
                         f"expected the pointer {running[i]}, the bytes of the sequences before it")
    return dtype, sizes, pointers


def open_token_file(path, n_vocab, digest):
    """One token file as a read-only memory map, checked (sizes, header, ids < n_vocab); ``digest``
    is fed the bytes of every file read."""
    path = Path(path)
    index = path.with_suffix(".idx")
    if index.is_file():
        dtype, sizes, _ = read_megatron_index(index)
        digest.update(index.read_bytes())
        expected = int(sizes.sum()) * dtype.itemsize
        size = _size(path)
        if size != expected:
            raise StoreError(f"{path}: {size} bytes, {'truncated' if size < expected else 'oversized'} at byte "
                             f"offset {min(size, expected)}: {index} says {int(sizes.sum())} {dtype} ids, "
                             f"{expected} bytes")
        scan_ids(path, dtype, n_vocab, digest=digest)
        return map_tokens(path, dtype)
    size = _size(path)
    with open_regular(path) as f:
        head = f.read(4)
    if len(head) == 4 and struct.unpack("<i", head)[0] == LLMC_MAGIC:
        dtype, count = read_llmc_header(path)
        scan_ids(path, dtype, n_vocab, offset=LLMC_HEADER_BYTES, digest=digest)
        return map_tokens(path, dtype, offset=LLMC_HEADER_BYTES, count=count)
    if size % NANOGPT_DTYPE.itemsize:
        raise StoreError(f"{path}: {size} bytes, an odd number: truncated at byte offset {size - 1} (nanoGPT's "
                         f".bin holds uint16 ids, 2 bytes each)")
    try:
        scan_ids(path, NANOGPT_DTYPE, n_vocab, digest=digest)
    except StoreError as error:
        found = struct.unpack("<i", head)[0] if len(head) == 4 else None
        raise StoreError(f"{error} (read as nanoGPT's raw uint16 ids: no llm.c magic {LLMC_MAGIC} at byte offset 0, "
                         f"found {found})") from None
    return map_tokens(path, NANOGPT_DTYPE)


def open_token_files(directory, n_vocab):
    """({"train": TokenSequence, "val": TokenSequence}, sha256 over every file) of a directory of
    other tools' token files (the module docstring)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    splits = {}
    for split in ("train", "val"):
        files = sorted(p for p in directory.glob(f"*{split}*.bin") if p.is_file())
        if not files:
            raise StoreError(f"{directory}: no *{split}*.bin file (expected nanoGPT's train.bin/val.bin, llm.c "
                             f"shards or Megatron .bin/.idx pairs, or a token store with a manifest.json)")
        parts = []
        for path in files:
            digest.update(path.name.encode() + b"\0")
            parts.append(open_token_file(path, n_vocab, digest))
        splits[split] = TokenSequence(parts)
    return splits, digest.hexdigest()


def holds_token_files(directory):
    """Whether ``directory`` holds ``*train*.bin`` files (other tools' token files)."""
    return any(Path(directory).glob("*train*.bin"))
