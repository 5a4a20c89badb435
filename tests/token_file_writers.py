"""Token files as other tools write them, from their published layouts, for the reader tests.

- nanoGPT's ``data/*/prepare.py``: ``np.array(ids, dtype=np.uint16).tofile(path)``.
- llm.c's ``dev/data/data_common.py`` ``write_datafile``: 256 int32 (magic 20240520, version 1 for
  uint16 or 7 for uint32, token count, zeros), then the ids.
- Megatron-LM's ``MMapIndexedDatasetBuilder``: each sequence's ids appended to PREFIX.bin; PREFIX.idx
  written by its index writer: magic, <Q version 1, <B dtype code, <Q sequences, <Q documents, int32
  sizes, int64 byte pointers (running sum of size x itemsize), int64 document indices.
"""
import struct

import numpy as np

LLMC_MAGIC = 20240520
MEGATRON_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.uint16: 8}


def write_nanogpt(path, ids):
    np.array(ids, dtype=np.uint16).tofile(path)


def write_llmc(path, ids, version=1):
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = LLMC_MAGIC, version, len(ids)
    tokens = np.array(ids, dtype=np.uint16 if version == 1 else np.uint32)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def write_megatron(prefix, documents, dtype=np.uint16):
    """``documents``: a list of documents, each a list of sequences (lists of ids)."""
    sizes, doc_idx = [], [0]
    with open(f"{prefix}.bin", "wb") as data:
        for document in documents:
            for sequence in document:
                data.write(np.array(sequence, dtype=dtype).tobytes(order="C"))
                sizes.append(len(sequence))
            doc_idx.append(len(sizes))
    itemsize = np.dtype(dtype).itemsize
    pointers, address = [], 0
    for size in sizes:
        pointers.append(address)
        address += size * itemsize
    with open(f"{prefix}.idx", "wb") as index:
        index.write(b"MMIDIDX\x00\x00")
        index.write(struct.pack("<Q", 1))
        index.write(struct.pack("<B", MEGATRON_CODES[dtype]))
        index.write(struct.pack("<Q", len(sizes)))
        index.write(struct.pack("<Q", len(doc_idx)))
        index.write(np.array(sizes, dtype=np.int32).tobytes(order="C"))
        index.write(np.array(pointers, dtype=np.int64).tobytes(order="C"))
        index.write(np.array(doc_idx, dtype=np.int64).tobytes(order="C"))
