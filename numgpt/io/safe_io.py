"""Reading files that may come from strangers: safetensors and JSON, validated
before anything is trusted, and nothing ever unpickled.

A safetensors file is ``[8-byte little-endian header length N][N bytes of JSON
header][data section]``. The header maps each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
start of the data section) plus an optional ``"__metadata__"`` dict of strings.

Who checks what, before a single array is made:

- The ``safetensors`` library judges the structure, as every other reader of
  the file would: the header length against the file and its own 100 MB limit,
  UTF-8, JSON syntax, the type of every field, the dtype names, that shapes and
  offsets are unsigned integers, that each span is as long as its shape and
  dtype say, and that the spans tile the data section exactly (no gap, no
  overlap, no byte left over).
- numgpt checks what the library lets through: the same key twice (the library
  keeps the last, so two readers could see two files), fields besides the three,
  dtypes the format knows but numgpt has no NumPy type for (the float8, float6
  and float4 families, C64), BOOL bytes other than 0 and 1 (the library never reads tensor
  bytes), a header limit lower than the library's (``max_header_bytes``), and,
  first of all, pickle, zip and .npy files, which are named as such rather than
  as a bad header (``sniff_format``). NaN and Inf are ``check_finite``'s, for
  the caller to ask for; BF16 is widened to float32 here, as NumPy has no bfloat16.

Every failure is an ``UnsafeFileError`` that names the file, the tensor (when
one is at fault) and a short ``reason`` code. The library says whether a file
is refused, not which tensor is at fault, and words a gap, an overlap and
reversed offsets alike; so once it has refused one, ``_diagnose`` reads the
header again to name the tensor and the reason. The library's own message is
kept in the error beside numgpt's words.

The library takes a file, or bytes it copies tensor by tensor. Bytes numgpt
already holds (a checkpoint's, read once and sha256-checked) are shown to it as
a stand-in: a temporary sparse file with the same length field and header and a
hole for the data, which is all the library reads to judge a file. Memory stays
bounded by the file size: the file is read once, and each array is a view of
those bytes or a copy of its own span.

PyTorch's ``.pt`` / ``.pth`` / ``.bin`` / ``.pkl`` files are zip archives or
pickles, and ``.npy`` files may hold pickled objects; loading any of them can
run arbitrary code, so ``sniff_format`` recognises them by their first bytes and
``refuse_pickle`` raises ``PickleFormatError`` with the way to convert them.
"""
import ctypes
import hashlib
import json
import math
import os
import stat
import sys
import tempfile
from pathlib import Path

import numpy
from safetensors import SafetensorError, safe_open

from numgpt.device import array_module, is_host, to_host
from numgpt.errors import NumgptError
from numgpt.safe_write import atomic_write
from numgpt.schema import MAX_TENSORS, MAX_TENSOR_DIMS, MAX_TENSOR_NAME

MAX_HEADER_BYTES = 100_000_000      # the safetensors library's own limit; a caller may set a lower one
MAX_JSON_BYTES = 100 * 2**20
MAX_JSON_DEPTH = 64                # levels of nested arrays and objects in a JSON file

# safetensors dtype -> little-endian NumPy dtype; BF16 is widened to float32 on load
SAFETENSORS_DTYPES = {
    "BOOL": numpy.dtype("bool"), "U8": numpy.dtype("u1"), "I8": numpy.dtype("i1"),
    "U16": numpy.dtype("<u2"), "I16": numpy.dtype("<i2"), "F16": numpy.dtype("<f2"), "BF16": numpy.dtype("<u2"),
    "U32": numpy.dtype("<u4"), "I32": numpy.dtype("<i4"), "F32": numpy.dtype("<f4"),
    "U64": numpy.dtype("<u8"), "I64": numpy.dtype("<i8"), "F64": numpy.dtype("<f8"),
}
TENSOR_FIELDS = ("dtype", "shape", "data_offsets")
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform.startswith("linux") else None
_DTYPE_NAME = {name: name for name in SAFETENSORS_DTYPES}     # one shared string per dtype name

ZIP_MAGIC = b"PK\x03\x04"          # torch.save since 1.6, .npz
PICKLE_PROTO_MAGIC = b"\x80"       # pickle protocol >= 2 (older torch.save, .pkl)
NPY_MAGIC = b"\x93NUMPY"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib")

CONVERT_HINT = ("numgpt does not load pickle-based formats (PyTorch .pt/.pth/.bin, .pkl, .npy/.npz with objects): "
                "unpickling can run arbitrary code. A torch.save file (zip format) is read as data by "
                "`numgpt convert FILE --out DIR` (safetensors), numgpt.load_torch and --init FILE.pth; "
                "or load Hugging Face's model.safetensors with numgpt.io.pretrained.")


class UnsafeFileError(NumgptError, ValueError):
    """A file numgpt refuses to load; ``path``, ``tensor`` (or None), a short ``reason`` code and
    ``words``, the message without the file's name."""

    def __init__(self, path, reason, message, tensor=None):
        self.path, self.reason, self.tensor, self.words = str(path), reason, tensor, message
        where = f"{path}" + (f", tensor {tensor!r}" if tensor is not None else "")
        super().__init__(f"{where}: {message}")


class PickleFormatError(UnsafeFileError):
    """A pickle, zip (torch.save) or .npy file: refused without being opened as one."""


class NonFiniteError(UnsafeFileError):
    """Arrays holding NaN or Inf; ``tensors`` lists every one of them."""


# ---------------------------------------------------------------- format sniffing

def sniff_format(head, suffix=""):
    """'safetensors', 'zip', 'pickle', 'npy' or 'unknown' from a file's first bytes (at least 9 of them)
    and, when the bytes are ambiguous, its suffix.

    A safetensors header length can start with the byte 0x80, so a file counts as
    safetensors first when its length field is plausible and its header opens with '{'.
    """
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(PICKLE_PROTO_MAGIC) or suffix.lower() in (".pkl", ".pickle"):
        return "pickle"
    return "unknown"


def refuse_pickle(path, kind):
    """Raise PickleFormatError for a file recognised as ``kind`` ('zip', 'pickle', 'npy')."""
    what = {"zip": "a zip archive (a PyTorch torch.save file or .npz)", "pickle": "a pickle",
            "npy": "a NumPy .npy file"}[kind]
    raise PickleFormatError(path, "pickle-format", f"this is {what}. {CONVERT_HINT}")


def check_not_pickle(path):
    """Raise PickleFormatError if the file at ``path`` looks like a pickle, zip or .npy file."""
    with open_regular(path) as f:
        head = f.read(16)
    kind = sniff_format(head, Path(path).suffix)
    if kind in ("zip", "pickle", "npy"):
        refuse_pickle(path, kind)


# ---------------------------------------------------------------- JSON

def _reject_duplicates(path):
    def hook(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise UnsafeFileError(path, "duplicate-key", f"duplicate key {key!r} in a JSON object")
            seen[key] = value
        return seen
    return hook


def _reject_constant(path):
    def hook(name):
        raise UnsafeFileError(path, "non-finite-json", f"JSON holds {name}, which is not valid JSON")
    return hook


def parse_json(data, path, allow_nan=False):
    """Decode ``data`` (bytes or a buffer) as strict UTF-8 JSON; duplicate keys, nesting deeper than
    MAX_JSON_DEPTH and (unless allowed) NaN/Infinity refused."""
    try:
        text = str(data, "utf-8")                       # bytes, bytearray or memoryview, decoded once
    except UnicodeDecodeError as exc:
        raise UnsafeFileError(path, "not-utf8", f"not UTF-8 text (invalid byte at offset {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_reject_duplicates(path),
                           parse_constant=None if allow_nan else _reject_constant(path))
    except json.JSONDecodeError as exc:
        raise UnsafeFileError(path, "not-json", f"not valid JSON: {exc.msg} at line {exc.lineno} "
                                                f"column {exc.colno}") from None
    except RecursionError:
        raise UnsafeFileError(path, "not-json", "JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        if isinstance(exc, UnsafeFileError):
            raise
        raise UnsafeFileError(path, "not-json", f"not valid JSON: {exc}") from None
    _check_depth(value, path)
    return value


def _check_depth(value, path):
    """UnsafeFileError when ``value`` nests arrays and objects more than MAX_JSON_DEPTH deep."""
    depth, level = 0, [value] if isinstance(value, (dict, list)) else []
    while level:                                          # the containers at one depth, breadth first
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise UnsafeFileError(path, "too-deep", f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
        level = [item for container in level for item in (container.values() if isinstance(container, dict)
                                                          else container) if isinstance(item, (dict, list))]


def read_json(path, max_bytes=MAX_JSON_BYTES, allow_nan=False):
    """The JSON value in ``path``, a regular file (see open_regular); a file larger than
    ``max_bytes``, non-UTF-8 text, a syntax error, duplicate keys, nesting deeper than
    MAX_JSON_DEPTH or NaN/Infinity (unless ``allow_nan``) raise UnsafeFileError."""
    return parse_json(read_limited(path, max_bytes, "JSON file"), path, allow_nan=allow_nan)


# ---------------------------------------------------------------- regular files only

def open_regular(path):
    """``path`` opened for reading in binary mode, when it is a regular file (a symlink to one
    is followed); a FIFO, a device, a socket or a directory raises UnsafeFileError unread.

    The type is checked before the open (os.stat) and again on the open descriptor (fstat), as
    the path may change between the two; the open is non-blocking, so that a FIFO swapped in
    between cannot hang it, and blocking again once the file is known to be regular."""
    kind = os.stat(path).st_mode
    if not stat.S_ISREG(kind):
        raise UnsafeFileError(path, "not-regular", f"is {_file_kind(kind)}, not a regular file: numgpt reads "
                                                   f"files only")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise UnsafeFileError(path, "not-regular", f"is {_file_kind(kind)}, not a regular file: numgpt "
                                                       f"reads files only")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode):
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a regular file"


def read_limited(path, max_bytes, what="file"):
    """The bytes of the regular file ``path``; UnsafeFileError when it holds more than ``max_bytes``."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise UnsafeFileError(path, "too-large", f"{what} of {size} bytes exceeds the limit of {max_bytes}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFileError(path, "too-large", f"{what} grew past the limit of {max_bytes} bytes while read")
    return data


# ---------------------------------------------------------------- safetensors

def _numgpt_entry_problem(entry):
    """(reason, words) for what the library lets through in a header entry: fields
    beyond the three, or a dtype numgpt has no NumPy type for; else None."""
    if not isinstance(entry, dict):
        return "bad-entry", f"header entry is {type(entry).__name__}, not an object"
    extra = sorted(set(entry) - set(TENSOR_FIELDS))
    missing = [field for field in TENSOR_FIELDS if field not in entry]
    if missing or extra:
        return "bad-entry", (f"header entry has missing fields {missing} / unknown fields {extra}; expected "
                             f"exactly {list(TENSOR_FIELDS)}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        return "unknown-dtype", f"unknown or unsupported dtype {dtype!r}; numgpt reads {', '.join(SAFETENSORS_DTYPES)}"
    if isinstance(entry["shape"], list) and len(entry["shape"]) > MAX_TENSOR_DIMS:
        return "too-many-dims", (f"shape has {len(entry['shape'])} dimensions; numgpt reads tensors of at most "
                                 f"{MAX_TENSOR_DIMS}")
    return None


def _entry_problem(entry, data_len):
    """(reason, words) for the first fault of one header entry, in numgpt's words; else None."""
    problem = _numgpt_entry_problem(entry)
    if problem is not None:
        return problem
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        return "bad-shape", f"shape {shape!r} is not a list of non-negative integers"
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len):
        return "bad-offsets", (f"data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end <= "
                               f"{data_len} (the data section's size)")
    expected = math.prod(shape) * SAFETENSORS_DTYPES[entry["dtype"]].itemsize
    if offsets[1] - offsets[0] != expected:
        return "size-mismatch", (f"span of {offsets[1] - offsets[0]} bytes does not match shape {shape} x "
                                 f"{entry['dtype']} = {expected} bytes")
    return None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _diagnose(path, head, length):
    """(reason, words, tensor) for a file the library refused, in numgpt's words.

    The library says *whether*; its messages do not say which tensor, and it
    words a gap, an overlap and reversed offsets alike. This names them. It
    runs only after a refusal, so it never lets anything in: when it finds
    nothing, the reason is "refused" and the library's message stands alone.
    """
    if length < 8:
        return "truncated", f"file of {length} bytes is shorter than the 8-byte header length", None
    header_len = int.from_bytes(head[:8], "little")
    if header_len > length - 8:
        return "header-too-large", f"header length {header_len} is larger than the file ({length} bytes)", None
    try:
        header = parse_json(bytes(head[8:8 + header_len]), path)
    except UnsafeFileError as error:
        return error.reason, error.words, None
    if not isinstance(header, dict):
        return "not-object", f"header is a JSON {type(header).__name__}, not an object", None
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        return "bad-metadata", "__metadata__ is not an object of strings", None
    data_len = length - 8 - header_len
    for name, entry in header.items():
        problem = _entry_problem(entry, data_len)
        if problem is not None:
            return (*problem, name)
    # the spans must tile the data section: sorted by start, each begins where the last ended
    position, previous = 0, None
    for name, (begin, end) in sorted(((n, e["data_offsets"]) for n, e in header.items()), key=lambda item: item[1]):
        if begin < position:
            return "overlap", f"bytes [{begin}, {end}) overlap tensor {previous!r} (ends at {position})", name
        if begin > position:
            return "gap", f"bytes [{position}, {begin}) before this tensor belong to no tensor", name
        position, previous = end, name
    if position != data_len:
        return "gap", f"the last {data_len - position} bytes of the data section belong to no tensor", None
    return "refused", "the safetensors library refuses this file", None


def _library_refusal(file):
    """None when the safetensors library accepts the file at ``file``, else its error message."""
    try:
        with safe_open(str(file), framework="numpy"):
            return None
    except SafetensorError as error:
        return str(error)


def _library_refusal_of_bytes(head, length):
    """The library's verdict on bytes in memory: ``length`` bytes whose length field and header are ``head``.

    The library judges a file by its header and its length alone (it reads no tensor
    byte when it opens one), and it takes files, or bytes it copies tensor by tensor.
    So it is shown a stand-in: a temporary file holding ``head`` and then a hole up
    to ``length`` bytes. The hole takes no memory, and no disk on the file systems
    of Linux and macOS, which keep such files sparse.
    """
    with tempfile.TemporaryDirectory(prefix="numgpt-safetensors-") as directory:
        stand_in = Path(directory) / "stand-in.safetensors"
        with open(stand_in, "wb") as f:
            f.write(head)
            f.truncate(length)
        return _library_refusal(stand_in)


def _validate(path, head, length, max_header_bytes, file=None):
    """(entries, metadata, data_start) of the safetensors file ``path`` of ``length`` bytes.

    ``head`` holds the first bytes: the whole file when the bytes are in memory, or at least
    its first 16 when they are the file ``file`` on disk, whose header is read only after the
    library has judged the file (so that the two never hold it at once). The library judges
    ``file``, or a stand-in of ``head`` and ``length``; numgpt's own checks come before it
    (pickles, the caller's header limit, the number of tensors, counted in the raw bytes) and
    after it (what it lets through). Each entry is name -> (dtype, shape, begin, end).
    """
    kind = sniff_format(bytes(head[:16]), Path(str(path)).suffix)
    if kind in ("zip", "pickle", "npy"):
        refuse_pickle(path, kind)
    header_len = int.from_bytes(head[:8], "little") if length >= 8 else 0
    if header_len > max_header_bytes:
        raise UnsafeFileError(path, "header-too-large", f"header length {header_len} exceeds the limit of "
                                                        f"{max_header_bytes} bytes")
    if 8 + header_len <= length:                      # counted in the bytes, before any parser builds them
        needle = b'"data_offsets"'
        count = (_count_in_file(file, needle, 8, 8 + header_len) if file is not None
                 else head.count(needle, 8, 8 + header_len))
        if count > MAX_TENSORS:
            raise UnsafeFileError(path, "too-many-tensors", f"header describes {count} tensors; numgpt reads "
                                                            f"files of at most {MAX_TENSORS}")
    refusal = (_library_refusal(file) if file is not None
               else _library_refusal_of_bytes(bytes(head[:8 + header_len]), length))
    _return_freed_memory()                            # what the library parsed, given back before numgpt parses
    if file is not None and 8 + header_len <= length:
        head = _read_start(file, 8 + header_len)
    if refusal is not None:
        reason, words, tensor = _diagnose(path, head, length)
        raise UnsafeFileError(path, reason, f"{words} (safetensors: {refusal})", tensor)
    try:
        with memoryview(head) as view:
            text = str(view[8:8 + header_len], "utf-8")                # the library has checked: a second look
    except UnicodeDecodeError as exc:
        raise UnsafeFileError(path, "not-utf8", f"not UTF-8 text (invalid byte at offset {exc.start})") from None
    del head                                                          # a header read from the file: freed
    header = _parse_header(text, path)                                # the library lets a duplicate key win
    metadata = header.pop("__metadata__", None) or {}
    entries = {}
    for name in list(header):
        entry = header.pop(name)                                     # each entry dropped as it is moved
        problem = None if isinstance(entry, tuple) else (_numgpt_entry_problem(entry) or ("bad-entry", "not a tensor"))
        if problem is None and len(name) > MAX_TENSOR_NAME:
            problem = "long-name", f"tensor name of {len(name)} characters; the limit is {MAX_TENSOR_NAME}"
        if problem is not None:
            raise UnsafeFileError(path, *problem, name[:MAX_TENSOR_NAME])
        entries[name] = entry
    return entries, metadata, 8 + header_len


def _parse_header(text, path):
    """The header's JSON, with each valid tensor entry made a compact (dtype, shape, begin, end) tuple
    as it is parsed (a dict with its two lists takes several times the memory of its text); an
    entry with a fault stays a dict for the caller to name it."""
    def compact(pairs):
        entry = dict(pairs)
        if len(entry) != len(pairs):
            _reject_duplicates(path)(pairs)
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (len(entry) == len(TENSOR_FIELDS) and isinstance(shape, list) and isinstance(offsets, list)
                and _numgpt_entry_problem(entry) is None):
            return (_DTYPE_NAME[entry["dtype"]], tuple(shape), *offsets)
        return entry
    try:
        return json.loads(text, object_pairs_hook=compact, parse_constant=_reject_constant(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UnsafeFileError(path, "not-json", f"not valid JSON: {getattr(exc, 'msg', exc)}") from None


def _return_freed_memory():
    """Give the C heap's free memory back to the system: glibc keeps what the safetensors library
    allocated and freed (several times a large header) for the process's later use. Elsewhere, nothing."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _count_in_file(path, needle, begin, end, chunk=1 << 20):
    """Occurrences of ``needle`` in bytes [begin, end) of the file, read a chunk at a time."""
    count, carry = 0, b""
    with open_regular(path) as f:
        f.seek(begin)
        remaining = end - begin
        while remaining > 0:
            block = f.read(min(chunk, remaining))
            if not block:
                break
            remaining -= len(block)
            block = carry + block
            count += block.count(needle)
            carry = block[-(len(needle) - 1):]            # too short to hold a whole needle counted already
    return count


def _read_start(path, size):
    """The first ``size`` bytes of the file (fewer if it is shorter), in a buffer of their own."""
    with open_regular(path) as f:
        head = bytearray(size)
        del head[f.readinto(head):]
    return head


def check_safetensors_header(path, max_header_bytes=MAX_HEADER_BYTES):
    """Validate the safetensors file at ``path``, reading its header only (for
    loaders that then read tensor by tensor): (entries, metadata);
    UnsafeFileError (or PickleFormatError) otherwise."""
    with open_regular(path) as f:
        length = os.fstat(f.fileno()).st_size
        first = f.read(16)
    entries, metadata, _ = _validate(path, first, length, max_header_bytes, file=path)
    return entries, metadata


def parse_safetensors(data, path, max_header_bytes=MAX_HEADER_BYTES, copy=True):
    """(name -> array, metadata) from the bytes of a safetensors file, validated; see the module docstring.

    With ``copy=True`` every array owns its memory; with ``copy=False`` the arrays are views of
    ``data`` (pass a bytearray for writable ones), so that loading takes no more memory than the file.
    """
    entries, metadata, data_start = _validate(path, data, len(data), max_header_bytes)
    arrays = {}
    for name, (dtype, shape, begin, _end) in entries.items():
        raw = numpy.frombuffer(data, dtype=SAFETENSORS_DTYPES[dtype], count=math.prod(shape),
                               offset=data_start + begin).reshape(shape)
        if dtype == "BOOL" and raw.view(numpy.uint8).max(initial=0) > 1:
            raise UnsafeFileError(path, "bad-bool", "BOOL tensor holds bytes other than 0 and 1", name)
        if dtype == "BF16":  # the upper half of a float32
            arrays[name] = (raw.astype(numpy.uint32) << 16).view(numpy.float32)
        elif copy or not raw.dtype.isnative:
            arrays[name] = raw.astype(raw.dtype.newbyteorder("="), copy=True)  # an owned, native array
        else:
            arrays[name] = raw
    return arrays, metadata


def read_bytes(path):
    """The bytes of the regular file ``path`` as a bytearray, read once into a buffer of its size."""
    with open_regular(path) as f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        del data[f.readinto(data):]
    return data


def read_safetensors(path, max_header_bytes=MAX_HEADER_BYTES, copy=True):
    """(name -> array, metadata dict) of the safetensors file at ``path``, validated first.
    ``copy=False`` returns writable views of one buffer the size of the file (see parse_safetensors)."""
    return parse_safetensors(read_bytes(path), path, max_header_bytes, copy=copy)


def check_finite(arrays, path):
    """Raise NonFiniteError naming every float array in ``arrays`` (name -> array) that holds NaN or Inf."""
    bad = []
    for name, array in arrays.items():
        array = numpy.asarray(array) if is_host(array) else array      # a device array is checked on its device
        xp = array_module(array)
        if array.dtype.kind in "fc" and not bool(xp.isfinite(array).all()):
            bad.append(f"{name} ({int(xp.isnan(array).sum())} NaN, {int(xp.isinf(array).sum())} Inf)")
    if bad:
        error = NonFiniteError(path, "non-finite", f"non-finite values in {len(bad)} tensor(s): " + ", ".join(bad))
        error.tensors = [entry.split(" (")[0] for entry in bad]
        raise error


# ---------------------------------------------------------------- writing

def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open_regular(path) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items() if name != "BF16"}


def write_header(fh, entries, metadata=None):
    """Write the length field and JSON header of a safetensors file to ``fh``: ``entries`` is
    name -> (dtype name, shape, bytes per element) in file order; the data follows in that order."""
    fields, offset = {}, 0
    for name, (dtype_name, shape, itemsize) in entries.items():
        nbytes = math.prod(shape) * itemsize
        fields[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        fields["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(fields, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)                           # padded with spaces to 8 bytes
    fh.write(len(text).to_bytes(8, "little"))
    fh.write(text)


def stream_safetensors(fh, header, arrays, metadata=None):
    """Write a safetensors file to ``fh`` one tensor at a time: ``header`` is
    name -> (shape, dtype) in file order, ``arrays`` yields the arrays in that
    order (each is made contiguous, written and dropped: no copy of the whole).

    The format: an 8-byte little-endian header length, a JSON header
    (name -> dtype, shape, data_offsets, and string __metadata__), padded with
    spaces to 8 bytes, then the tensors' bytes, little-endian, C order.
    """
    names = {}
    for name, (shape, dtype) in header.items():
        dtype = numpy.dtype(dtype).newbyteorder("<") if numpy.dtype(dtype).itemsize > 1 else numpy.dtype(dtype)
        names[name] = (_DTYPE_NAMES[dtype], shape, dtype.itemsize)
    write_header(fh, names, metadata)
    for (name, (shape, dtype)), array in zip(header.items(), arrays, strict=True):
        array = numpy.asarray(to_host(array), dtype=numpy.dtype(dtype).newbyteorder("<"), order="C")   # 0-d stays 0-d
        if array.shape != tuple(shape):
            raise ValueError(f"stream_safetensors: {name} has shape {array.shape}, the header says {tuple(shape)}")
        fh.write(memoryview(array.reshape(-1)).cast("B"))


def write_safetensors(path, arrays, metadata=None):
    """Write ``arrays`` (name -> array) with string ``metadata`` to ``path``
    atomically. Arrays must not share memory (store a tied weight once). Arrays
    on a CUDA device are copied to the host one at a time as they are written."""
    path = Path(path)
    arrays = {name: numpy.asarray(array) if is_host(array) else array for name, array in arrays.items()}
    names = list(arrays)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = arrays[first], arrays[second]
            if is_host(a) == is_host(b) and array_module(a).may_share_memory(a, b):
                raise ValueError(f"{path}: tensors {first!r} and {second!r} share memory; store a tied weight once")
    header = {name: (array.shape, array.dtype) for name, array in arrays.items()}
    atomic_write(path, lambda fh: stream_safetensors(fh, header, arrays.values(), metadata))

