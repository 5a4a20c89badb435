"""PyTorch zip files written by hand for the tests, as torch.save lays them out: a tiny pickle
assembler (protocol 2 opcodes as bytes) and the zip container around it. The hostile corpus and
the fuzz tests build their files with these and Python's zipfile; nothing here unpickles."""
import struct
import zipfile

PROTO2 = b"\x80\x02"
STOP = b"."
MARK = b"("
TUPLE = b"t"
EMPTY_TUPLE = b")"
EMPTY_DICT = b"}"
EMPTY_LIST = b"]"
REDUCE = b"R"
BINPERSID = b"Q"
NEWFALSE = b"\x89"
NEWTRUE = b"\x88"
NONE = b"N"
SETITEM = b"s"
SETITEMS = b"u"
APPEND = b"a"
BUILD = b"b"
TUPLE1 = b"\x85"


def text(value):
    raw = value.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def integer(value):
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -2**31 <= value < 2**31:
        return b"J" + value.to_bytes(4, "little", signed=True)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def real(value):
    return b"G" + struct.pack(">d", value)


def name(module, attribute):
    return b"c" + module.encode() + b"\n" + attribute.encode() + b"\n"


def tuple_of(*items):
    return MARK + b"".join(items) + TUPLE


def put(index):
    return b"q" + bytes([index])


def get(index):
    return b"h" + bytes([index])


def ordered_dict():
    return name("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE


def storage(key, numel, kind="FloatStorage"):
    """A persistent id ('storage', torch.<kind>, key, 'cpu', numel)."""
    return tuple_of(text("storage"), name("torch", kind), text(key), text("cpu"), integer(numel)) + BINPERSID


def tensor(key, numel, size, stride=None, offset=0, kind="FloatStorage", requires_grad=False):
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())."""
    if stride is None:
        stride, step = [], 1
        for extent in reversed(size):
            stride.insert(0, step)
            step *= extent
    return (name("torch._utils", "_rebuild_tensor_v2")
            + tuple_of(storage(key, numel, kind), integer(offset), tuple_of(*map(integer, size)),
                       tuple_of(*map(integer, stride)), NEWTRUE if requires_grad else NEWFALSE, ordered_dict())
            + REDUCE)


def state_dict(entries):
    """A pickle of {name: opcodes of the value} in an OrderedDict."""
    return PROTO2 + ordered_dict() + MARK + b"".join(text(key) + value for key, value in entries.items()) \
        + SETITEMS + STOP


def torch_zip(path, pickled, storages=None, prefix="archive", members=None, compression=zipfile.ZIP_STORED):
    """Write ``path`` as torch.save does: <prefix>/data.pkl, <prefix>/data/<key> (stored), byteorder,
    version; ``members`` {name: bytes} adds (or, by name, replaces) members."""
    files = {f"{prefix}/data.pkl": pickled, f"{prefix}/byteorder": b"little",
             **{f"{prefix}/data/{key}": raw for key, raw in (storages or {}).items()}, f"{prefix}/version": b"3\n"}
    files.update(members or {})
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for member, raw in files.items():
            archive.writestr(member, raw)
    return path
