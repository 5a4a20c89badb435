"""PyTorch's own files (``torch.save``'s ``.pth``/``.pt``, transformers' ``pytorch_model.bin``)
read without PyTorch and without Python's unpickler: nothing in the file can run.

Since PyTorch 1.6 ``torch.save`` writes a zip archive, every member under one
folder (``<prefix>/``, the archive's own, read rather than assumed):

- ``<prefix>/data.pkl``: the object (a dict of tensors, the optimizer's state...)
  as a pickle, protocol 2;
- ``<prefix>/data/<key>``: one member per storage, its raw little-endian bytes,
  stored (never compressed);
- ``<prefix>/byteorder`` (``little``), ``<prefix>/version`` and a few more
  records that are read only for the byte order.

A pickle is a program for a small stack machine. This module is that machine,
restricted to what ``torch.save`` emits: its own loop over the opcodes of the
table ``OPCODES``, building only dicts, lists, tuples, numbers, strings and
NumPy arrays. A GLOBAL opcode names a callable; only the names of ``GLOBALS``
are accepted, each mapped to a builder of this module (a tensor from a storage,
a dict for ``OrderedDict``...), and REDUCE calls only those builders, with
their arguments checked. Nothing is imported, evaluated or looked up by a name
read from the file.

Memory and time are bounded by the file: every opcode reads at least one byte,
the mark stack and the nesting of containers have limits, a tensor's elements
may not outnumber its storage's, storages are read once each, at their offset,
into their array, and the zip's members may not overlap or be compressed.
Every failure is a ``TorchFileError`` naming the file, where (the member, the
opcode and its byte offset in data.pkl) and what was expected.
"""
import itertools
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy

from numgpt.bf16 import from_bf16_bits
from numgpt.io.safe_io import UnsafeFileError, open_regular, parse_json, read_limited
from numgpt.schema import MAX_FILE_NAME, MAX_TENSORS, MAX_TENSOR_DIMS, shown

MAX_PICKLE_BYTES = 64 * 2**20        # data.pkl of a 405B-parameter state dict is a few MB
MAX_MEMBERS = 2 * MAX_TENSORS        # storages plus the archive's few records
MAX_MARKS = 64                       # open MARKs at once (torch.save nests a handful)
MAX_NESTING = 64                     # containers inside containers in the loaded object
MAX_RECORD_BYTES = 4096              # byteorder, version and the other small records
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")     # a zip member's local file header, 30 bytes
LOCAL_HEADER_MAGIC = b"PK\x03\x04"
TORCH_SUFFIXES = (".pth", ".pt", ".bin")           # what torch.save writes, by custom
BIN_FILE = "pytorch_model.bin"                    # Hugging Face's weights before safetensors
BIN_INDEX = "pytorch_model.bin.index.json"        # ... and the index of their shards
MAX_INDEX_BYTES = 64 * 2**20
SAFETENSORS_DTYPE = {numpy.dtype("<f4"): "F32", numpy.dtype("<f2"): "F16", numpy.dtype("<f8"): "F64",
                     numpy.dtype("<i8"): "I64", numpy.dtype("<i4"): "I32", numpy.dtype("u1"): "U8",
                     numpy.dtype("<u2"): "BF16", numpy.dtype("?"): "BOOL"}
LEGACY_HINT = ("re-save it with PyTorch >= 1.6 in the zip format: "
               "torch.save(obj, path, _use_new_zipfile_serialization=True)")


class TorchFileError(UnsafeFileError):
    """A PyTorch file numgpt does not read: its ``path``, a short ``reason`` and the words."""


# ---------------------------------------------------------------- what the file may name

@dataclass(frozen=True)
class StorageType:
    """A ``torch.<Name>Storage`` class as a GLOBAL names it: the NumPy dtype of its bytes."""
    name: str
    dtype: numpy.dtype
    bf16: bool = False


@dataclass(frozen=True)
class Builder:
    """A callable the file may REDUCE: ``torch._utils._rebuild_tensor_v2`` and the others."""
    name: str


STORAGE_TYPES = {name: StorageType(name, numpy.dtype(dtype), name == "BFloat16Storage") for name, dtype in (
    ("FloatStorage", "<f4"), ("HalfStorage", "<f2"), ("BFloat16Storage", "<u2"), ("LongStorage", "<i8"),
    ("IntStorage", "<i4"), ("ByteStorage", "u1"), ("BoolStorage", "?"))}
REBUILD_TENSOR = Builder("torch._utils._rebuild_tensor_v2")
REBUILD_PARAMETER = Builder("torch._utils._rebuild_parameter")
ORDERED_DICT = Builder("collections.OrderedDict")
DEVICE = Builder("torch.device")
GLOBALS = {("collections", "OrderedDict"): ORDERED_DICT,
           ("torch._utils", "_rebuild_tensor_v2"): REBUILD_TENSOR,
           ("torch._utils", "_rebuild_parameter"): REBUILD_PARAMETER,
           ("torch", "device"): DEVICE,
           **{("torch", name): storage for name, storage in STORAGE_TYPES.items()}}


@dataclass(frozen=True)
class StorageRef:
    """A BINPERSID ('storage', type, key, location, numel): the member data/<key>."""
    type: StorageType
    key: str
    numel: int


# ---------------------------------------------------------------- the zip container

@dataclass(frozen=True)
class _Member:
    name: str
    data_offset: int      # where its bytes start in the file
    size: int


class _Archive:
    """The zip of ``torch.save``: its members checked, data.pkl read, storages read on demand."""

    def __init__(self, path, file):
        self.path, self.file = path, file
        self.file_size = os.fstat(file.fileno()).st_size
        head = file.read(4)
        file.seek(0)
        if head != LOCAL_HEADER_MAGIC:
            legacy = head[:1] == b"\x80"                # before 1.6: pickles, the first one a magic number
            self.fail("legacy-format" if legacy else "not-zip",
                      ("is a legacy (pre-1.6) torch.save file, a bare pickle; numgpt reads the zip format: "
                       if legacy else "is not a PyTorch zip archive (no zip header); ") + LEGACY_HINT)
        try:
            infos = zipfile.ZipFile(file).infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, struct.error,
                NotImplementedError, UnicodeDecodeError, OverflowError) as error:
            self.fail("bad-zip", f"is not a readable zip archive ({type(error).__name__}: {error})")
        self.infos = self._checked(infos)
        self.prefix = self._prefix()
        self._storages, self._refs = {}, {}      # key -> its array, and the reference that first read it

    def fail(self, reason, words):
        raise TorchFileError(self.path, reason, words)

    def _checked(self, infos):
        if len(infos) > MAX_MEMBERS:
            self.fail("too-many-members", f"holds {len(infos)} zip members; expected at most {MAX_MEMBERS}")
        names = {}
        for info in infos:
            name = info.filename
            if not 0 <= info.header_offset < self.file_size or min(info.file_size, info.compress_size) < 0:
                self.fail("bad-zip", f"zip member {shown(name)} lies outside the file (offset "
                                     f"{info.header_offset}, {self.file_size} bytes)")
            parts = name.split("/")
            if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or ":" in parts[0]:
                self.fail("unsafe-name", f"zip member {shown(name)} is not a plain relative name "
                                         f"(absolute, '..' or a drive)")
            if name in names:
                self.fail("duplicate-name", f"zip member {shown(name)} appears twice")
            names[name] = info
        spans = sorted((info.header_offset, info.header_offset + 30 + len(info.filename.encode())
                        + info.compress_size, info.filename) for info in infos)
        for (_, end, name), (begin, _, following) in itertools.pairwise(spans):
            if end > begin:
                self.fail("overlapping-members", f"zip members {shown(name)} and {shown(following)} overlap")
        if spans and spans[-1][1] > self.file_size:
            self.fail("truncated", f"zip member {shown(spans[-1][2])} reaches past the end of the file "
                                   f"({self.file_size} bytes)")
        return names

    def _prefix(self):
        found = [name[:-len("/data.pkl")] for name in self.infos if name.endswith("/data.pkl")
                 and name.count("/") == 1]
        if len(found) != 1:
            self.fail("no-data-pkl", f"holds {len(found)} '<prefix>/data.pkl' members; expected one "
                                     f"(torch.save's layout)")
        prefix = found[0]
        strays = [name for name in self.infos if not name.startswith(prefix + "/")]
        if strays:
            self.fail("stray-member", f"zip member {shown(strays[0])} is outside the archive's folder "
                                      f"{shown(prefix)}")
        return prefix

    def record(self, name, limit):
        """The bytes of the member ``<prefix>/<name>`` (None when absent), at most ``limit`` of them."""
        info = self.infos.get(f"{self.prefix}/{name}")
        if info is None:
            return None
        if info.file_size > limit:
            self.fail("too-large", f"zip member {shown(info.filename)} holds {info.file_size} bytes; "
                                   f"expected at most {limit}")
        if info.compress_type == zipfile.ZIP_STORED:
            member = self.member(info.filename)
            self.file.seek(member.data_offset)
            data = self.file.read(member.size)
        else:
            try:
                with zipfile.ZipFile(self.file).open(info) as stream:
                    data = stream.read(limit + 1)
            except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, OSError, zlib.error) as error:
                self.fail("bad-zip", f"zip member {shown(info.filename)} cannot be read "
                                     f"({type(error).__name__}: {error})")
        if len(data) != info.file_size:
            self.fail("bad-zip", f"zip member {shown(info.filename)} holds {len(data)} bytes; its directory "
                                 f"entry says {info.file_size}")
        return data

    def member(self, name):
        """Where the stored (uncompressed) member ``name``'s bytes lie in the file, from its local header."""
        info = self.infos[name]
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            self.fail("compressed-storage", f"zip member {shown(name)} is compressed; torch.save stores "
                                            f"storages uncompressed, and numgpt reads them only so")
        self.file.seek(info.header_offset)
        header = self.file.read(LOCAL_HEADER.size)
        if len(header) != LOCAL_HEADER.size or LOCAL_HEADER.unpack(header)[0] != LOCAL_HEADER_MAGIC:
            self.fail("bad-zip", f"zip member {shown(name)} has no local header at offset {info.header_offset}")
        name_length, extra_length = LOCAL_HEADER.unpack(header)[-2:]
        if self.file.read(name_length) != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800
                                                                    else "cp437"):
            self.fail("bad-zip", f"zip member {shown(name)}'s local header names another file")
        data_offset = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
        if data_offset + info.file_size > self.file_size:
            self.fail("truncated", f"zip member {shown(name)} reaches past the end of the file")
        return _Member(name, data_offset, info.file_size)

    def storage(self, ref):
        """The 1-d array of the storage ``ref`` (read once, shared by every tensor that views it)."""
        cached = self._storages.get(ref.key)
        if cached is not None:
            first = self._refs[ref.key]
            if (first.type, first.numel) != (ref.type, ref.numel):
                self.fail("storage-mismatch", f"storage {shown(ref.key)} is declared twice, as {first.numel} "
                                              f"of {first.type.name} and {ref.numel} of {ref.type.name}")
            return cached
        name = f"{self.prefix}/data/{ref.key}"
        if name not in self.infos:
            self.fail("missing-storage", f"storage {shown(ref.key)} has no zip member {shown(name)}")
        member = self.member(name)
        if member.size != ref.numel * ref.type.dtype.itemsize:
            self.fail("storage-size", f"storage {shown(ref.key)} declares {ref.numel} elements of "
                                      f"{ref.type.name} ({ref.numel * ref.type.dtype.itemsize} bytes); its "
                                      f"member holds {member.size} bytes")
        array = numpy.empty(ref.numel, ref.type.dtype if ref.type.dtype != numpy.bool_ else numpy.uint8)
        self.file.seek(member.data_offset)
        if self.file.readinto(memoryview(array).cast("B")) != member.size:
            self.fail("truncated", f"storage {shown(ref.key)} ends early")
        if ref.type.dtype == numpy.bool_:
            if array.size and array.max() > 1:
                self.fail("bad-bool", f"storage {shown(ref.key)} holds a bool byte other than 0 and 1")
            array = array.view(numpy.bool_)
        self._storages[ref.key], self._refs[ref.key] = array, ref
        return array


# ---------------------------------------------------------------- the pickle machine

class _Stop(Exception):
    """STOP: the object is complete."""


class _Machine:
    """One pass over data.pkl's opcodes with a stack, a mark stack and a memo."""

    def __init__(self, archive, data, keep_bf16):
        self.archive, self.data, self.keep_bf16 = archive, data, keep_bf16
        self.stack, self.marks, self.memo = [], [], {}
        self.floor = 0                 # the stack's length at the last open MARK: below it is not the opcode's
        self.ordered_dicts = {}        # id -> the dicts OrderedDict made (kept, so ids stay theirs): BUILD targets
        self.position = self.opcode_at = 0
        self.opcode = None

    # -- errors and operands
    def fail(self, reason, words):
        raise TorchFileError(self.archive.path, reason,
                             f"data.pkl offset {self.opcode_at}, {self.opcode}: {words}")

    def take(self, count):
        end = self.position + count
        if end > len(self.data):
            self.fail("truncated-pickle", f"needs {count} bytes; the pickle ends at {len(self.data)}")
        chunk = self.data[self.position:end]
        self.position = end
        return chunk

    def integer(self, count, signed=False):
        return int.from_bytes(self.take(count), "little", signed=signed)

    def line(self):
        end = self.data.find(b"\n", self.position, self.position + 256)
        if end < 0:
            self.fail("truncated-pickle", "expected a name of at most 256 bytes ending in a newline")
        text = self.take(end - self.position + 1)[:-1]
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            self.fail("bad-name", f"the name {shown(text)} is not ASCII")

    def pop(self, count=1):
        if len(self.stack) - self.floor < count:
            self.fail("stack-underflow", f"needs {count} values on the stack above the last MARK; "
                                         f"it holds {len(self.stack) - self.floor}")
        values = self.stack[len(self.stack) - count:]
        del self.stack[len(self.stack) - count:]
        return values

    def pop_one(self):
        if len(self.stack) <= self.floor:
            self.fail("stack-underflow", "needs a value on the stack above the last MARK; it holds none")
        return self.stack.pop()

    def pop_mark(self):
        if not self.marks:
            self.fail("no-mark", "expected a MARK before it")
        values = self.stack[self.floor:]
        del self.stack[self.marks.pop():]
        self.floor = self.marks[-1] if self.marks else 0
        return values

    def top(self, wanted, words):
        if len(self.stack) <= self.floor or not isinstance(self.stack[-1], wanted):
            self.fail("wrong-target", f"expected {words} on the stack, found "
                                      f"{_kind(self.stack[-1]) if len(self.stack) > self.floor else 'nothing'}")
        return self.stack[-1]

    def key(self, value):
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            self.fail("bad-key", f"a dict key must be a string or a number, found {_kind(value)}")
        return value

    # -- the loop
    def run(self):
        if self.data[:2] != b"\x80\x02":
            protocol = self.data[1] if self.data[:1] == b"\x80" and len(self.data) > 1 else None
            self.opcode = "PROTO"
            self.fail("protocol", f"expected pickle protocol 2 (torch.save's), found "
                                  f"{'no PROTO opcode' if protocol is None else f'protocol {protocol}'}")
        self.position, data, end = 2, self.data, len(self.data)
        try:
            while True:
                self.opcode_at = position = self.position
                if position >= end:
                    self.fail("truncated-pickle", f"the pickle ends at {end} without STOP")
                code = data[position]
                self.position = position + 1
                entry = OPCODES.get(code)
                if entry is None:
                    self.opcode = _opcode_name(code)
                    self.fail("opcode", f"opcode {self.opcode} is not one torch.save writes; refused")
                self.opcode, handler = entry
                handler(self)
        except _Stop:
            pass
        if self.position != len(self.data):
            self.fail("trailing-bytes", f"{len(self.data) - self.position} bytes follow STOP")
        return self.stack[0]

    def op_stop(self):
        if self.marks:
            self.fail("open-mark", f"{len(self.marks)} MARKs were never closed")
        if len(self.stack) != 1:
            self.fail("stack-at-stop", f"expected one value on the stack, found {len(self.stack)}")
        raise _Stop

    def op_mark(self):
        if len(self.marks) >= MAX_MARKS:
            self.fail("too-deep", f"more than {MAX_MARKS} MARKs open at once")
        self.marks.append(len(self.stack))
        self.floor = len(self.stack)

    def op_global(self):
        module, name = self.line(), self.line()
        found = GLOBALS.get((module, name))
        if found is None:
            self.fail("global", f"refuses GLOBAL {shown(module + '.' + name)}: numgpt builds only tensors, "
                                f"OrderedDicts and torch.device from a PyTorch file")
        self.stack.append(found)

    def op_reduce(self):
        function, args = self.pop(2)
        if not isinstance(function, Builder):
            self.fail("reduce", f"REDUCE needs a callable from GLOBAL; found {_kind(function)}")
        if not isinstance(args, tuple):
            self.fail("reduce", f"REDUCE needs a tuple of arguments; found {_kind(args)}")
        self.stack.append(BUILDERS[function](self, args))

    def op_binpersid(self):
        pid = self.pop_one()
        if not (isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[0], str) and pid[0] == "storage"
                and isinstance(pid[1], StorageType) and isinstance(pid[2], str) and isinstance(pid[3], str)
                and _is_count(pid[4])):
            self.fail("persistent-id", f"expected ('storage', torch.<Type>Storage, key, location, numel); "
                                       f"found {shown(pid)}")
        self.stack.append(StorageRef(pid[1], pid[2], pid[4]))

    def op_build(self):
        state = self.pop_one()
        target = self.top(dict, "an OrderedDict to BUILD")
        if id(target) not in self.ordered_dicts or not isinstance(state, dict):
            self.fail("build", f"BUILD sets only an OrderedDict's attributes from a dict; found "
                               f"{_kind(target)} and {_kind(state)}")
        # the state is the OrderedDict's attributes (torch's _metadata: versions of modules); ignored

    def op_setitem(self):
        key, value = self.pop(2)
        self.top(dict, "a dict for SETITEM")[self.key(key)] = value

    def op_setitems(self):
        values = self.pop_mark()
        if len(values) % 2:
            self.fail("setitems", f"expected key-value pairs after the MARK; found {len(values)} values")
        target = self.top(dict, "a dict for SETITEMS")
        for i in range(0, len(values), 2):
            target[self.key(values[i])] = values[i + 1]

    def op_append(self):
        value = self.pop_one()
        self.top(list, "a list for APPEND").append(value)

    def op_appends(self):
        values = self.pop_mark()
        self.top(list, "a list for APPENDS").extend(values)

    def op_tuple(self):
        self.stack.append(tuple(self.pop_mark()))

    def op_tuple_n(self):
        self.stack.append(tuple(self.pop(TUPLE_SIZES[self.opcode])) if self.opcode != "TUPLE1"
                          else (self.pop_one(),))

    def op_put(self):
        self.memo[self.integer(1 if self.opcode == "BINPUT" else 4)] = self.top(object, "a value to memoize")

    def op_get(self):
        index = self.integer(1 if self.opcode == "BINGET" else 4)
        if index not in self.memo:
            self.fail("memo", f"memo index {index} was never stored")
        self.stack.append(self.memo[index])

    def op_unicode(self):
        raw = self.take(self.integer(4))
        try:
            self.stack.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            self.fail("bad-string", f"the string {shown(raw[:40])} is not UTF-8")

    # -- the builders REDUCE calls
    def build_tensor(self, args):
        if len(args) not in (6, 7):
            self.fail("rebuild-tensor", f"_rebuild_tensor_v2 takes (storage, offset, size, stride, "
                                        f"requires_grad, hooks[, metadata]); got {len(args)} arguments")
        storage, offset, size, stride, requires_grad, hooks = args[:6]
        if not isinstance(storage, StorageRef):
            self.fail("rebuild-tensor", f"argument 1 must be a storage; found {_kind(storage)}")
        if not (_is_count(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
                and len(size) == len(stride) <= MAX_TENSOR_DIMS and all(map(_is_count, size + stride))):
            self.fail("rebuild-tensor", f"expected an offset and size and stride tuples of at most "
                                        f"{MAX_TENSOR_DIMS} counts each; got {shown(args[1:4])}")
        if not isinstance(requires_grad, bool) or not (isinstance(hooks, dict) and not hooks):
            self.fail("rebuild-tensor", "expected requires_grad a bool and an empty hooks OrderedDict")
        if len(args) == 7 and not (args[6] is None or isinstance(args[6], dict) and not args[6]):
            self.fail("rebuild-tensor", f"expected no tensor metadata; found {shown(args[6])}")
        return self.view(storage, offset, size, stride)

    def view(self, ref, offset, size, stride):
        elements, last = 1, offset
        for extent, step in zip(size, stride):
            elements *= extent
            last += (extent - 1) * step
        if elements > ref.numel or (elements and last >= ref.numel) or offset > ref.numel:
            self.fail("out-of-storage", f"a tensor of size {size}, stride {stride} at offset {offset} "
                                        f"reaches outside its storage {shown(ref.key)} of {ref.numel} elements")
        storage = self.archive.storage(ref)
        item = storage.itemsize
        contiguous = stride == _contiguous_strides(size)
        array = numpy.lib.stride_tricks.as_strided(storage[offset:] if elements else storage[:0], size,
                                                   tuple(step * item if extent > 1 else 0
                                                         for extent, step in zip(size, stride)),
                                                   writeable=contiguous)
        return from_bf16_bits(array) if ref.type.bf16 and not self.keep_bf16 else array

    def build_parameter(self, args):
        if len(args) != 3 or not isinstance(args[0], numpy.ndarray) or not isinstance(args[1], bool) \
                or not (isinstance(args[2], dict) and not args[2]):
            self.fail("rebuild-parameter", f"_rebuild_parameter takes (tensor, requires_grad, empty hooks); "
                                           f"got {shown(tuple(_kind(arg) for arg in args))}")
        return args[0]

    def build_ordered_dict(self, args):
        if args:
            self.fail("ordered-dict", f"OrderedDict is rebuilt from no arguments; got {len(args)}")
        made = {}
        self.ordered_dicts[id(made)] = made
        return made

    def build_device(self, args):
        if not (1 <= len(args) <= 2 and isinstance(args[0], str) and all(isinstance(a, int) for a in args[1:])):
            self.fail("device", f"torch.device takes a name and an index; got {shown(args)}")
        return args[0] if len(args) == 1 else f"{args[0]}:{args[1]}"


def _storage_type_called(machine, args):
    machine.fail("reduce", "a storage class is named by a persistent id, never called")


BUILDERS = {REBUILD_TENSOR: _Machine.build_tensor, REBUILD_PARAMETER: _Machine.build_parameter,
            ORDERED_DICT: _Machine.build_ordered_dict, DEVICE: _Machine.build_device,
            **{storage: _storage_type_called for storage in STORAGE_TYPES.values()}}
TUPLE_SIZES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


def _constant(value):
    return lambda machine: machine.stack.append(value)


def _fixed(decode, count):
    return lambda machine: machine.stack.append(decode(machine.take(count)))


OPCODES = {                                   # protocol 2 as torch.save writes it; nothing else
    ord("."): ("STOP", _Machine.op_stop),
    ord("("): ("MARK", _Machine.op_mark),
    ord("c"): ("GLOBAL", _Machine.op_global),
    ord("R"): ("REDUCE", _Machine.op_reduce),
    ord("Q"): ("BINPERSID", _Machine.op_binpersid),
    ord("b"): ("BUILD", _Machine.op_build),
    ord("t"): ("TUPLE", _Machine.op_tuple),
    0x85: ("TUPLE1", _Machine.op_tuple_n),
    0x86: ("TUPLE2", _Machine.op_tuple_n),
    0x87: ("TUPLE3", _Machine.op_tuple_n),
    ord(")"): ("EMPTY_TUPLE", _constant(())),
    ord("}"): ("EMPTY_DICT", lambda machine: machine.stack.append({})),
    ord("]"): ("EMPTY_LIST", lambda machine: machine.stack.append([])),
    ord("s"): ("SETITEM", _Machine.op_setitem),
    ord("u"): ("SETITEMS", _Machine.op_setitems),
    ord("a"): ("APPEND", _Machine.op_append),
    ord("e"): ("APPENDS", _Machine.op_appends),
    ord("X"): ("BINUNICODE", _Machine.op_unicode),
    ord("J"): ("BININT", _fixed(lambda raw: int.from_bytes(raw, "little", signed=True), 4)),
    ord("K"): ("BININT1", _fixed(lambda raw: raw[0], 1)),
    ord("M"): ("BININT2", _fixed(lambda raw: int.from_bytes(raw, "little"), 2)),
    0x8a: ("LONG1", lambda machine: machine.stack.append(machine.integer(machine.integer(1), signed=True))),
    ord("G"): ("BINFLOAT", _fixed(lambda raw: struct.unpack(">d", raw)[0], 8)),
    0x88: ("NEWTRUE", _constant(True)),
    0x89: ("NEWFALSE", _constant(False)),
    ord("N"): ("NONE", _constant(None)),
    ord("q"): ("BINPUT", _Machine.op_put),
    ord("r"): ("LONG_BINPUT", _Machine.op_put),
    ord("h"): ("BINGET", _Machine.op_get),
    ord("j"): ("LONG_BINGET", _Machine.op_get),
}
REFUSED_NAMES = {ord("i"): "INST", ord("o"): "OBJ", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX", 0x82: "EXT1",
                 0x83: "EXT2", 0x84: "EXT4", 0x95: "FRAME", 0x93: "STACK_GLOBAL", 0x80: "PROTO",
                 ord("p"): "PUT", ord("g"): "GET", ord("I"): "INT", ord("L"): "LONG", ord("S"): "STRING",
                 ord("V"): "UNICODE", ord("P"): "PERSID", ord("F"): "FLOAT", 0x8c: "SHORT_BINUNICODE",
                 0x8b: "LONG4", ord("T"): "BINSTRING", ord("U"): "SHORT_BINSTRING", ord("B"): "BINBYTES",
                 ord("C"): "SHORT_BINBYTES", 0x94: "MEMOIZE", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER",
                 0x98: "READONLY_BUFFER", 0x8d: "BINUNICODE8", 0x8e: "BINBYTES8", 0x8f: "EMPTY_SET",
                 0x90: "ADDITEMS", 0x91: "FROZENSET", ord("0"): "POP", ord("1"): "POP_MARK", ord("2"): "DUP",
                 ord("d"): "DICT", ord("l"): "LIST"}


def _opcode_name(code):
    return REFUSED_NAMES.get(code, f"byte 0x{code:02x}")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


def _contiguous_strides(size):
    strides, step = [], 1
    for extent in reversed(size):
        strides.append(step)
        step *= max(extent, 1)
    return tuple(reversed(strides))


def _kind(value):
    if isinstance(value, numpy.ndarray):
        return f"a tensor {value.shape}"
    if isinstance(value, Builder):
        return value.name
    if isinstance(value, StorageType):
        return f"torch.{value.name}"
    return {dict: "a dict", list: "a list", tuple: "a tuple", str: "a string", bool: "a bool", int: "an int",
            float: "a float", type(None): "None", StorageRef: "a storage"}.get(type(value), type(value).__name__)


def _check_nesting(path, value):
    """Refuse a loaded object nested deeper than MAX_NESTING or holding itself (the memo can make
    cycles); one visit per container, without recursion."""
    depth, on_path = {}, set()
    pending = [(value, False)]
    while pending:
        node, done = pending.pop()
        if not isinstance(node, (dict, list, tuple)):
            continue
        key = id(node)
        children = [c for c in (node.values() if isinstance(node, dict) else node)
                    if isinstance(c, (dict, list, tuple))]
        if done:
            on_path.discard(key)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if depth[key] > MAX_NESTING:
                raise TorchFileError(path, "too-deep", f"the object nests containers more than {MAX_NESTING} "
                                                       f"deep")
            continue
        if key in depth:
            continue
        if key in on_path:
            raise TorchFileError(path, "cycle", "the object contains itself (a cycle through the memo)")
        on_path.add(key)
        pending.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise TorchFileError(path, "cycle", "the object contains itself (a cycle through the memo)")
            if len(on_path) > MAX_NESTING:
                raise TorchFileError(path, "too-deep", f"the object nests containers more than {MAX_NESTING} "
                                                       f"deep")
            pending.append((child, False))


# ---------------------------------------------------------------- the entry point

def load_torch(path, keep_bf16=False):
    """The object ``torch.save`` wrote to ``path`` (a ``.pth``, ``.pt`` or ``pytorch_model.bin``), as
    dicts, lists, tuples, numbers, strings and NumPy arrays, without running a byte of it.

    Tensors are NumPy views of their storages (a tied weight and its transpose share memory);
    bfloat16 tensors are widened to float32, or returned as their uint16 bits with ``keep_bf16``
    (``numgpt.bf16.from_bf16_bits`` widens them). ``TorchFileError`` for anything else."""
    with open_regular(path) as file:
        archive = _Archive(path, file)
        byteorder = archive.record("byteorder", MAX_RECORD_BYTES)
        if byteorder is not None and byteorder.strip() != b"little":
            archive.fail("byteorder", f"byteorder is {shown(byteorder)}; numgpt reads little-endian files")
        data = archive.record("data.pkl", MAX_PICKLE_BYTES)
        return read_pickle(archive, data, keep_bf16)


def read_pickle(archive, data, keep_bf16=False):
    """The object of the pickle ``data`` whose storages are in ``archive`` (an open _Archive)."""
    result = _Machine(archive, data, keep_bf16).run()
    _check_nesting(archive.path, result)
    return result


# ---------------------------------------------------------------- pytorch_model.bin, as load_gpt2 reads it

class _Slice:
    def __init__(self, array):
        self.array = array

    def get_shape(self):
        return list(self.array.shape)

    def get_dtype(self):
        return SAFETENSORS_DTYPE.get(self.array.dtype, str(self.array.dtype))


class TorchWeights:
    """``safe_open``'s keys / get_slice / get_tensor over a pytorch_model.bin or its shards."""

    def __init__(self, path):
        self.path = Path(path)
        files = _shard_files(self.path) if self.path.name == BIN_INDEX else {None: self.path}
        self.tensors = {}
        for names, file in files.items():
            state = load_torch(file)
            if not (isinstance(state, dict) and all(isinstance(value, numpy.ndarray) for value in state.values())):
                raise TorchFileError(file, "not-state-dict", "expected a state dict (names -> tensors)")
            wanted = state if names is None else {key: state[key] for key in names if key in state}
            absent = [key for key in names or () if key not in state]
            if absent:
                raise TorchFileError(self.path, "index-mismatch", f"{file.name} lacks {len(absent)} tensors its "
                                                                  f"index lists ({absent[0]} first)")
            self.tensors.update(wanted)

    def keys(self):
        return list(self.tensors)

    def get_slice(self, key):
        return _Slice(self.tensors[key])

    def get_tensor(self, key):
        return self.tensors[key]


def _shard_files(index_path):
    """{(names...): shard path} of a pytorch_model.bin.index.json: plain file names in its directory."""
    index = parse_json(read_limited(index_path, MAX_INDEX_BYTES, "index"), index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise TorchFileError(index_path, "bad-index", "expected a JSON object with a non-empty 'weight_map'")
    by_file = {}
    for name, file in weight_map.items():
        if not (isinstance(file, str) and 0 < len(file.encode()) <= MAX_FILE_NAME and "/" not in file
                and "\\" not in file and file not in (".", "..") and file.endswith(".bin")):
            raise TorchFileError(index_path, "bad-index", f"tensor {shown(name)} is in {shown(file)}; expected the "
                                                          f"plain name of a .bin file in the same directory")
        by_file.setdefault(file, []).append(name)
    return {tuple(names): index_path.parent / file for file, names in by_file.items()}


def bin_weights(directory):
    """The pytorch_model.bin (or its index) of a model directory, or None."""
    for name in (BIN_FILE, BIN_INDEX):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None
