"""Hugging Face weight files, read and written one tensor at a time.

A Hugging Face model directory holds its weights in one of two layouts, as
transformers' ``save_pretrained`` writes them:

- ``model.safetensors``: every tensor in one file;
- ``model-00001-of-0000N.safetensors`` ... ``model-0000N-of-0000N.safetensors``
  and ``model.safetensors.index.json``, ``{"metadata": {"total_parameters": n,
  "total_size": bytes}, "weight_map": {tensor name: shard file name}}``: the
  tensors split into shards of at most ``max_shard_bytes`` (5 GiB by default).

When a directory holds both, ``model.safetensors`` is read, as transformers does.

Reading trusts nothing: the index is strict JSON whose file names must be plain
names in the directory (no ``/``, no ``..``), every shard's header is checked by
``safe_io.check_safetensors_header`` before any byte of it is used, and every
tensor must be in the shard the index names (and in one shard only).

``load_weights`` copies each tensor into its parameter in place, a few MiB at a
time (``CHUNK_BYTES`` of the file, read with ``readinto`` into one reused
buffer): BF16, the upper half of a float32, is widened by shifting its 16 bits
into the top of a uint32; F16, F32 and F64 are cast by NumPy. So the memory
loading takes is the model's parameters plus a few chunks, whatever the file's
size, and the file is never mapped or read whole. Every missing, unexpected,
misshapen, non-float and non-finite tensor is reported in one ``WeightsError``.

``save_weights`` writes the same layouts, one tensor at a time and each file
atomically, then removes the files of an earlier export that the new one does
not use.
"""
import contextlib
import json
import math
import re
from pathlib import Path
from typing import NamedTuple

import numpy

from numgpt import schema
from numgpt.device import like, to_host
from numgpt.errors import NumgptError, UsageError
from numgpt.io.safe_io import (MAX_JSON_BYTES, UnsafeFileError, check_safetensors_header, open_regular, parse_json,
                               read_limited, write_header)
from numgpt.safe_write import atomic_write
from numgpt.schema import MAX_FILE_NAME, MAX_TENSORS, MAX_TENSOR_NAME

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_NAME = "model-{index:05d}-of-{count:05d}.safetensors"       # transformers' names, counted from 1
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
PICKLE_WEIGHTS = re.compile(r"^(pytorch_model|model|tf_model|flax_model).*\.(bin|pt|pth|h5|msgpack|ckpt)$")

# safetensors dtype -> the little-endian NumPy dtype of its bytes (BF16 is read as its 16 bits)
FLOAT_DTYPES = {"BF16": numpy.dtype("<u2"), "F16": numpy.dtype("<f2"), "F32": numpy.dtype("<f4"),
                "F64": numpy.dtype("<f8")}
SAVE_DTYPES = {"float32": "F32", "bfloat16": "BF16"}
BF16_BITS = numpy.dtype(numpy.uint16)   # a destination of this dtype holds bf16 bits (bf16-true weights)
CHUNK_BYTES = 8 * 2**20          # file bytes read, converted and copied at a time
MAX_INDEX_EXTRA_STRINGS = 1024   # strings of an index besides its weight map's names (its metadata)


class WeightsError(NumgptError, ValueError):
    """A weights file that does not fit; the message names the file and every problem."""


class TensorInfo(NamedTuple):
    path: Path          # the safetensors file holding the tensor
    dtype: str          # its safetensors dtype: 'BF16', 'F32', ...
    shape: tuple


class _Span(NamedTuple):
    info: TensorInfo
    begin: int          # where the tensor's bytes start in the file


# ---------------------------------------------------------------- reading the layout

def weight_files(directory):
    """The safetensors files of the Hugging Face model ``directory``, sorted by name;
    WeightsError (see the module docstring) when its layout is broken."""
    return _scan(directory)[0]


def tensor_index(directory):
    """{tensor name: TensorInfo(path, dtype, shape)} of ``directory``'s weights, from the files' headers alone."""
    return {name: span.info for name, span in _scan(directory)[1].items()}


def _scan(directory):
    """([weight file paths], {name: _Span}) of ``directory``, every header and the index checked."""
    directory = Path(directory)
    if not directory.is_dir():
        raise WeightsError(f"{directory} is not a directory (expected a Hugging Face model directory holding "
                           f"{SINGLE_FILE} or {INDEX_FILE} and its shards)")
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE], _read_headers(directory / SINGLE_FILE)
    if (directory / INDEX_FILE).is_file():
        return _scan_sharded(directory)
    raise WeightsError(f"{directory} holds no safetensors weights: expected {SINGLE_FILE}, or {INDEX_FILE} "
                       f"and its shards. {describe_contents(directory)}")


def describe_contents(directory):
    """What ``directory`` holds, in words, for an error; with the pickle warning where it fits."""
    names = sorted(path.name for path in directory.iterdir())
    if not names:
        return "The directory is empty."
    shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
    words = f"It holds: {shown}."
    pickles = [name for name in names if PICKLE_WEIGHTS.match(name)]
    if pickles:
        words += (f" numgpt does not load pickle-based weights ({', '.join(pickles)}): unpickling can run "
                  "arbitrary code. Use the safetensors files of the model (most Hugging Face repositories "
                  "have them) or convert the weights to safetensors where you trust them.")
    return words


def _read_headers(path):
    """{name: _Span} of the safetensors file at ``path``, its header validated first."""
    try:
        entries, _ = check_safetensors_header(path)
    except UnsafeFileError as error:
        raise WeightsError(f"{path} is not a safetensors file numgpt reads: {error.words}") from error
    with open_regular(path) as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
    return {name: _Span(TensorInfo(path, dtype, shape), data_start + begin)
            for name, (dtype, shape, begin, _) in entries.items()}


def _is_plain_name(name):
    """A file name in the directory itself: no separator, not '.' or '..', no NUL, at most
    MAX_FILE_NAME bytes."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and len(name.encode("utf-8", "surrogatepass")) <= MAX_FILE_NAME)


def _scan_sharded(directory):
    """([shard paths], {name: _Span}) of a sharded directory: the index read, every shard's header read
    and matched to it."""
    index_path = directory / INDEX_FILE
    try:
        data = read_limited(index_path, MAX_JSON_BYTES, "index file")
    except UnsafeFileError as error:
        raise WeightsError(f"{index_path}: {error.words}") from error
    strings = data.count(b'"') // 2                          # at least as many as the JSON holds, counted unparsed
    if strings > 2 * MAX_TENSORS + MAX_INDEX_EXTRA_STRINGS:
        raise WeightsError(f"{index_path}: holds about {strings} JSON strings (counted by their quotes): more than "
                           f"an index of numgpt's limit of {MAX_TENSORS} tensors")
    try:
        index = parse_json(data, index_path)
    except UnsafeFileError as error:
        raise WeightsError(f"{index_path}: {error.words}") from error
    del data
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise WeightsError(f"{index_path} is not a safetensors index: expected a JSON object with a "
                           '"weight_map" object of tensor name -> shard file name')
    long_names = [schema.shown(tensor) for tensor in weight_map if len(tensor) > MAX_TENSOR_NAME]
    if long_names:
        raise _index_error(index_path, [f"{name}: a tensor name longer than {MAX_TENSOR_NAME} characters"
                                        for name in long_names])
    problems = [f"{tensor}: shard {schema.shown(name)} is not a plain file name in the directory (of at most "
                f"{MAX_FILE_NAME} bytes)" for tensor, name in weight_map.items() if not _is_plain_name(name)]
    problems += [f"{tensor}: shard {name!r} is not a .safetensors file"
                 for tensor, name in weight_map.items() if _is_plain_name(name) and not name.endswith(".safetensors")]
    if problems:
        raise _index_error(index_path, problems)
    shards = sorted(set(weight_map.values()))
    missing = [name for name in shards if not (directory / name).is_file()]
    if missing:
        raise WeightsError(f"{index_path} names shard(s) missing from {directory}: {schema.listed(missing)} "
                           f"(the directory holds {len(shards) - len(missing)} of its {len(shards)} shards)")
    spans, holder = {}, {}                                   # holder: tensor name -> the shard that holds it
    for name in shards:
        for tensor, span in _read_headers(directory / name).items():
            if tensor in holder:
                problems.append(f"{tensor}: in two shards, {holder[tensor]} and {name}")
            holder[tensor], spans[tensor] = name, span
    for tensor, name in weight_map.items():
        if tensor not in holder:
            problems.append(f"{tensor}: the index puts it in {name}, but no shard holds it")
        elif holder[tensor] != name:
            problems.append(f"{tensor}: the index puts it in {name}, but it is in {holder[tensor]}")
    problems += [f"{tensor}: in {shard}, but not in the index" for tensor, shard in holder.items()
                 if tensor not in weight_map]
    if problems:
        raise _index_error(index_path, problems)
    return [directory / name for name in shards], {tensor: spans[tensor] for tensor in weight_map}


def _count(problems):
    return f"{len(problems)} problem" + ("" if len(problems) == 1 else "s")


def _index_error(index_path, problems):
    return WeightsError(f"{index_path} does not describe its shards ({_count(problems)}):\n  "
                        + schema.listed(problems))


# ---------------------------------------------------------------- loading

def load_weights(params, directory, ignore=None):
    """Copy every tensor of the Hugging Face model ``directory`` into ``params`` in place.

    ``params`` maps each Hugging Face name to a numgpt Parameter (or an array),
    whose float32 or float64 data receives the tensor: BF16 and F16 are widened
    exactly, F32 and F64 cast to the parameter's dtype. A uint16 array receives
    bf16 bits (``--precision bf16-true``): BF16's bits copied as they are,
    never widened; other dtypes rounded to bf16 (nearest, ties to even). Tensors of the file
    whose names ``ignore`` (a regex, ``re.search``) matches are skipped, e.g.
    ``re.compile(r"rotary_emb\\.inv_freq$")``. Returns the names loaded, in file order.

    WeightsError lists every problem at once: missing tensors (with the shape
    expected), unexpected ones, misshapen ones (both shapes), dtypes other than
    BF16/F16/F32/F64, and tensors holding NaN or Inf. Every tensor that fits is
    copied before the error is raised, so after an error the parameters hold
    a mixture: do not use them.
    """
    directory = Path(directory)
    ignore = re.compile(ignore) if isinstance(ignore, str) else ignore
    spans = _scan(directory)[1]
    problems = [f"missing: {name} (expected shape {tuple(_data(param).shape)})"
                for name, param in params.items() if name not in spans]
    problems += [f"unexpected: {name} {span.info.shape}" for name, span in spans.items()
                 if name not in params and not (ignore is not None and ignore.search(name))]
    loadable = []
    for name, span in spans.items():
        if name not in params:
            continue
        expected = tuple(_data(params[name]).shape)
        if span.info.shape != expected:
            problems.append(f"misshapen: {name}: expected {expected}, got {span.info.shape}")
        elif span.info.dtype not in FLOAT_DTYPES:
            problems.append(f"unsupported dtype: {name} is {span.info.dtype} (expected one of "
                            f"{', '.join(FLOAT_DTYPES)})")
        else:
            loadable.append(name)
    buffer = bytearray(CHUNK_BYTES)
    with contextlib.ExitStack() as stack:
        handles = {}                                          # one open file per shard
        for name in sorted(loadable, key=lambda n: (str(spans[n].info.path), spans[n].begin)):  # sequential reads
            path = spans[name].info.path
            if path not in handles:
                handles[path] = stack.enter_context(open_regular(path))
            nan, inf = _copy_tensor(handles[path], spans[name], _data(params[name]), buffer)
            if nan or inf:
                problems.append(f"not finite: {name} holds {nan} NaN and {inf} Inf")
    if problems:
        raise WeightsError(f"{directory} does not hold the weights expected ({_count(problems)}):\n  "
                           + schema.listed(problems))
    return [name for name in spans if name in loadable]


def _data(param):
    """The array of a Parameter, or the array itself."""
    return param if isinstance(param, numpy.ndarray) else param.data


def _copy_tensor(f, span, dest, buffer):
    """Read the tensor ``span`` of the open file ``f`` into ``dest`` in place, rows of its first
    axis at a time, through ``buffer``; (NaN count, Inf count) of the values read."""
    raw_dtype = FLOAT_DTYPES[span.info.dtype]
    shape = span.info.shape
    if not shape:                                             # a 0-d tensor: one value, one "row"
        shape, dest = (1,), dest.reshape(1)
    rows = shape[0]
    row_bytes = math.prod(shape[1:]) * raw_dtype.itemsize
    if rows == 0 or row_bytes == 0:
        return 0, 0
    rows_per_chunk = max(1, len(buffer) // row_bytes)
    if rows_per_chunk * row_bytes > len(buffer):              # one row is larger than the buffer
        buffer = bytearray(row_bytes)
    nan = inf = 0
    for first in range(0, rows, rows_per_chunk):
        count = min(rows_per_chunk, rows - first)
        view = memoryview(buffer)[:count * row_bytes]
        f.seek(span.begin + first * row_bytes)
        if f.readinto(view) != len(view):
            raise WeightsError(f"{span.info.path}: the file ended inside a tensor (was it changed while read?)")
        raw = numpy.frombuffer(view, dtype=raw_dtype).reshape((count,) + shape[1:])
        if dest.dtype == BF16_BITS and span.info.dtype == "BF16":   # bf16-true: the bits as they are
            not_finite = (raw & 0x7F80) == 0x7F80                   # exponent all ones: Inf or NaN
            if not_finite.any():
                nan += int((not_finite & ((raw & 0x007F) != 0)).sum())
                inf += int((not_finite & ((raw & 0x007F) == 0)).sum())
            dest[first:first + count] = raw
            continue
        value = _widen(raw, span.info.dtype)
        if not numpy.isfinite(value).all():
            nan += int(numpy.isnan(value).sum())
            inf += int(numpy.isinf(value).sum())
        if dest.dtype == BF16_BITS:                                 # bf16-true from F16 / F32 / F64: rounded
            value = bfloat16_bits(numpy.asarray(value, dtype=numpy.float32))
        dest[first:first + count] = like(value, dest)      # copies and casts into the parameter
    return nan, inf


def _widen(raw, dtype):
    """Float values of raw file bytes: BF16's 16 bits become the upper half of a float32."""
    if dtype == "BF16":
        wide = raw.astype(numpy.uint32)                       # (rows, ...) uint32
        wide <<= 16
        return wide.view(numpy.float32)
    return raw


# ---------------------------------------------------------------- saving

def save_weights(state, directory, max_shard_bytes=5 * 2**30, metadata=None, dtype="float32"):
    """Write ``state`` ({Hugging Face name: array}) into ``directory`` as transformers lays weights out.

    All in one ``model.safetensors`` when the tensors fit in ``max_shard_bytes``,
    else transformers' shards ``model-00001-of-0000N.safetensors`` ... and
    ``model.safetensors.index.json``: the tensors in ``state``'s order, a new
    shard begun when the next tensor would not fit, a tensor larger than
    ``max_shard_bytes`` alone in a shard of its own (huggingface_hub's
    ``split_torch_state_dict_into_shards``). ``dtype`` is 'float32' or
    'bfloat16' (rounded to nearest, ties to even, as torch rounds).
    ``metadata`` ({str: str}) goes in each file's header, {"format": "pt"} by
    default (transformers wants it). Each file is written atomically, one tensor
    at a time and a few MiB of it at a time; the shards first, the index after
    them, and then the weight files of an earlier export that this one does not
    use are deleted. Returns the paths written.
    """
    if dtype not in SAVE_DTYPES:
        raise UsageError(f"save_weights dtype {dtype!r}: expected one of {', '.join(SAVE_DTYPES)}")
    file_dtype = SAVE_DTYPES[dtype]
    metadata = {"format": "pt"} if metadata is None else metadata
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsError(f"cannot write weights to {directory}: {error.strerror or error}") from None
    itemsize = 2 if file_dtype == "BF16" else 4
    sizes = {name: math.prod(numpy.shape(array)) * itemsize for name, array in state.items()}
    shards = _split(sizes, max_shard_bytes)
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [SHARD_NAME.format(index=i + 1, count=len(shards)) for i in range(len(shards))]
    written = []
    for name, shard in zip(names, shards, strict=True):
        entries = {tensor: tuple(numpy.shape(state[tensor])) for tensor in shard}
        atomic_write(directory / name,
                     lambda fh, entries=entries: _stream_shard(fh, entries, state, file_dtype, metadata))
        written.append(directory / name)
    if len(shards) > 1:
        index = {"metadata": {"total_parameters": sum(math.prod(numpy.shape(a)) for a in state.values()),
                              "total_size": sum(sizes.values())},
                 "weight_map": {tensor: name for name, shard in zip(names, shards, strict=True)
                                for tensor in shard}}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        atomic_write(directory / INDEX_FILE, lambda fh: fh.write(text.encode("utf-8")))
        written.append(directory / INDEX_FILE)
    for path in directory.iterdir():                          # an earlier export's files
        if (path.name in (SINGLE_FILE, INDEX_FILE) or SHARD_PATTERN.match(path.name)) and path not in written:
            path.unlink()
    return written


def _split(sizes, max_shard_bytes):
    """Lists of tensor names, one per shard, as huggingface_hub splits a state dict."""
    shards, current, current_bytes = [], [], 0
    for name, nbytes in sizes.items():
        if nbytes > max_shard_bytes:                          # alone, and the current shard goes on
            shards.append([name])
            continue
        if current and current_bytes + nbytes > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += nbytes
    if current or not shards:                                 # an empty state is one empty file
        shards.append(current)
    return shards


def _stream_shard(fh, entries, state, file_dtype, metadata):
    """Write one safetensors file to ``fh``: ``entries`` {name: shape} in file order, each
    tensor of ``state`` converted to ``file_dtype`` ('F32' or 'BF16') a chunk at a time.

    The header is safe_io's (write_header); then each tensor's bytes, little-endian, in C order.
    """
    itemsize = 2 if file_dtype == "BF16" else 4
    write_header(fh, {name: (file_dtype, shape, itemsize) for name, shape in entries.items()}, metadata)
    chunk = CHUNK_BYTES // 4                                  # float32 values converted at a time
    for name, shape in entries.items():
        array = numpy.asarray(to_host(state[name]))
        if array.shape != shape:
            raise ValueError(f"save_weights: {name} changed shape while written: {array.shape}, not {shape}")
        flat = array.reshape(-1)                              # a view when contiguous, else one copy
        for start in range(0, flat.size, chunk):
            block = numpy.asarray(flat[start:start + chunk], dtype="<f4")
            if file_dtype == "BF16":
                block = bfloat16_bits(block)
            fh.write(memoryview(numpy.ascontiguousarray(block)).cast("B"))


def bfloat16_bits(values):
    """The bfloat16 bits (uint16) of float32 ``values``, rounded to nearest, ties to even.

    bfloat16 is the upper 16 bits of a float32. Adding 0x7FFF to the bits rounds
    the lower half up exactly when it is above 0x8000; adding the kept half's lowest
    bit as well makes a tie (0x8000) round up only when that bit is 1, to even.
    A carry out of the mantissa raises the exponent, which is what rounding up
    across a power of two is; the largest floats round to Inf, as in torch.
    NaN would round like a number (to Inf, for a small payload): it stays a quiet NaN.
    """
    bits = numpy.asarray(values, dtype=numpy.float32).view(numpy.uint32)
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) >> 16).astype(numpy.uint16)
    nan = numpy.isnan(values)
    if nan.any():
        rounded[nan] = (bits[nan] >> 16).astype(numpy.uint16) | 0x0040       # keep the sign, set the quiet bit
    return rounded
