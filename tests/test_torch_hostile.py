"""Hostile PyTorch files (issue 25's list), built here with Python's own pickle and zipfile: each is
refused with its own TorchFileError, no code runs (a canary file stays absent), memory stays bounded
by the file's size, and nothing is written outside the target. Then property-based fuzzing: random
opcode streams and mutations of real .pth files give nothing but NumgptErrors."""
import io
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from torch_file_writers import (APPEND, BUILD, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, MARK, PROTO2, REDUCE, SETITEM, STOP,
                                TUPLE, TUPLE1, get, integer, name, ordered_dict, put, state_dict, storage, tensor, text,
                                torch_zip, tuple_of)

import numgpt
from numgpt import cli
from numgpt.io import torch_format
from numgpt.io.torch_format import TorchFileError

FIXTURES = Path(__file__).resolve().parent / "reference" / "torch_files"
FLOATS = np.arange(6, dtype=np.float32).tobytes()
FUZZ_EXAMPLES = 1000          # per fuzz test: a few seconds each
BOMB_BYTES = 2**30            # the zip bomb's storage, deflated to about 1 MB
DEEP = 10**6                  # nesting of the deep files
MILLION_OPCODES = ("deep-lists", "deep-tuples")


class Runs:
    """A callable that would touch the canary file if it were ever called (by an unpickler)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def pickled(value):
    return pickle.dumps(value, protocol=2)


def code_payloads(canary):
    """{label: protocol-2 pickle bytes that would create ``canary`` if unpickled}."""
    command = f"touch {canary}"
    return {
        "os.system": PROTO2 + name("os", "system") + text(command) + TUPLE1 + REDUCE + STOP,
        "builtins.eval": PROTO2 + name("builtins", "eval") + text(f"open({str(canary)!r}, 'w')") + TUPLE1
        + REDUCE + STOP,
        "subprocess.Popen": pickled(Runs(subprocess.Popen, ["touch", str(canary)])),
        "posix.system": pickled(Runs(os.system, command)),
    }


def hostile_cases(tmp, canary):
    """[(label, path, reason, words)]: each file and the error it must give."""
    cases = [(label, torch_zip(tmp / f"{label}.pth", payload), "global", label)
             for label, payload in code_payloads(canary).items()]
    shapes = {
        "reduce-ordered-dict-args": (PROTO2 + name("collections", "OrderedDict") + tuple_of(integer(1)) + REDUCE
                                     + STOP, "ordered-dict", "rebuilt from no arguments; got 1"),
        "reduce-tensor-args": (PROTO2 + name("torch._utils", "_rebuild_tensor_v2") + tuple_of(integer(1))
                               + REDUCE + STOP, "rebuild-tensor", "got 1 arguments"),
        "reduce-tensor-not-storage": (PROTO2 + name("torch._utils", "_rebuild_tensor_v2")
                                      + tuple_of(text("x"), integer(0), tuple_of(), tuple_of(), b"\x89",
                                                 ordered_dict()) + REDUCE + STOP, "rebuild-tensor",
                                      "argument 1 must be a storage; found a string"),
        "build-on-list": (PROTO2 + EMPTY_LIST + EMPTY_DICT + BUILD + STOP, "wrong-target",
                          "expected an OrderedDict to BUILD on the stack, found a list"),
        "build-on-plain-dict": (PROTO2 + EMPTY_DICT + EMPTY_DICT + BUILD + STOP, "build",
                                "BUILD sets only an OrderedDict's attributes"),
        "setitem-on-list": (PROTO2 + EMPTY_LIST + text("k") + text("v") + SETITEM + STOP, "wrong-target",
                            "expected a dict for SETITEM on the stack, found a list"),
        "setitem-on-tuple": (PROTO2 + EMPTY_TUPLE + text("k") + text("v") + SETITEM + STOP, "wrong-target",
                             "found a tuple"),
        "unhashable-key": (PROTO2 + EMPTY_DICT + EMPTY_LIST + text("v") + SETITEM + STOP, "bad-key",
                           "a dict key must be a string or a number, found a list"),
        "INST": (PROTO2 + b"ios\nsystem\n" + STOP, "opcode", "opcode INST is not one torch.save writes"),
        "OBJ": (PROTO2 + MARK + name("os", "system") + b"o" + STOP, "global", "'os.system'"),
        "OBJ-alone": (PROTO2 + MARK + b"o" + STOP, "opcode", "opcode OBJ"),
        "NEWOBJ": (PROTO2 + EMPTY_TUPLE + EMPTY_TUPLE + b"\x81" + STOP, "opcode", "opcode NEWOBJ"),
        "NEWOBJ_EX": (PROTO2 + EMPTY_TUPLE + b"\x92" + STOP, "opcode", "opcode NEWOBJ_EX"),
        "EXT1": (PROTO2 + b"\x82\x01" + STOP, "opcode", "opcode EXT1"),
        "STACK_GLOBAL": (PROTO2 + text("os") + text("system") + b"\x93" + STOP, "opcode", "opcode STACK_GLOBAL"),
        "protocol-4": (pickle.dumps({"a": 1}, protocol=4), "protocol", "found protocol 4"),
        "protocol-5": (pickle.dumps({"a": 1}, protocol=5), "protocol", "found protocol 5"),
        "frame-inside": (PROTO2 + b"\x95" + (9).to_bytes(8, "little") + EMPTY_DICT + STOP, "opcode", "FRAME"),
        "memo-nowhere": (PROTO2 + get(7) + STOP, "memo", "memo index 7 was never stored"),
        "mark-never-closed": (PROTO2 + MARK + EMPTY_DICT + STOP, "open-mark", "1 MARKs were never closed"),
        "deep-marks": (PROTO2 + MARK * DEEP + STOP, "too-deep", "more than 64 MARKs open"),
        "deep-lists": (PROTO2 + _deep_lists(DEEP) + STOP, "too-deep", "nests containers more than 64 deep"),
        "deep-tuples": (PROTO2 + EMPTY_TUPLE + TUPLE1 * DEEP + STOP, "too-deep", "more than 64 deep"),
        "cycle": (PROTO2 + EMPTY_LIST + put(0) + get(0) + APPEND + STOP, "cycle", "contains itself"),
        "trailing": (PROTO2 + EMPTY_DICT + STOP + b"junk", "trailing-bytes", "4 bytes follow STOP"),
        "truncated": (PROTO2 + text("abc")[:-1], "truncated-pickle", "needs 3 bytes"),
        "tensor-as-persistent-id": (PROTO2 + tuple_of(tensor("0", 6, [2, 3]), integer(1), integer(2), integer(3),
                                                    integer(4)) + b"Q" + STOP, "persistent-id",
                                    "expected ('storage', torch.<Type>Storage, key, location, numel)"),   # soak find
        "double-storage": (PROTO2 + tensor("0", 6, [6], kind="DoubleStorage") + STOP, "global",
                           "'torch.DoubleStorage'"),
    }
    for label, (payload, reason, words) in shapes.items():
        cases.append((label, torch_zip(tmp / f"{label}.pth", payload, {"0": FLOATS}), reason, words))
    storages = {
        "numel-disagrees": ({"w": tensor("0", 7, [7])}, {"0": FLOATS}, "storage-size",
                            "declares 7 elements of FloatStorage (28 bytes); its member holds 24 bytes"),
        "offset-outside": ({"w": tensor("0", 6, [2], offset=5)}, {"0": FLOATS}, "out-of-storage",
                           "at offset 5 reaches outside its storage '0' of 6 elements"),
        "stride-outside": ({"w": tensor("0", 6, [2, 3], [4, 1])}, {"0": FLOATS}, "out-of-storage",
                           "stride (4, 1)"),
        "expanded-view": ({"w": tensor("0", 6, [10**12], [0])}, {"0": FLOATS}, "out-of-storage",
                          "size (1000000000000,)"),
        "missing-storage": ({"w": tensor("9", 6, [6])}, {"0": FLOATS}, "missing-storage",
                            "storage '9' has no zip member"),
        "bool-byte": ({"w": tensor("0", 2, [2], kind="BoolStorage")}, {"0": b"\x00\x07"}, "bad-bool",
                      "a bool byte other than 0 and 1"),
        "storage-two-types": ({"a": tensor("0", 6, [6]), "b": tensor("0", 3, [3], kind="LongStorage")},
                              {"0": FLOATS}, "storage-mismatch",
                              "declared twice, as 6 of FloatStorage and 3 of LongStorage"),
    }
    for label, (entries, raw, reason, words) in storages.items():
        cases.append((label, torch_zip(tmp / f"{label}.pth", state_dict(entries), raw), reason, words))
    plain = state_dict({"w": tensor("0", 6, [6])})
    containers = {
        "dotdot-name": ({"archive/../../escape": b"x"}, "unsafe-name", "'archive/../../escape'"),
        "absolute-name": ({"/etc/passwd": b"x"}, "unsafe-name", "'/etc/passwd'"),
        "stray-member": ({"other/file": b"x"}, "stray-member", "outside the archive's folder 'archive'"),
        "two-data-pkl": ({"second/data.pkl": plain}, "no-data-pkl", "holds 2 '<prefix>/data.pkl' members"),
        "big-endian": ({"archive/byteorder": b"big"}, "byteorder", "numgpt reads little-endian files"),
    }
    for label, (members, reason, words) in containers.items():
        cases.append((label, torch_zip(tmp / f"{label}.pth", plain, {"0": FLOATS}, members=members),
                      reason, words))
    cases += [
        ("duplicate-name", _duplicate(tmp / "duplicate.pth", plain), "duplicate-name", "appears twice"),
        ("zip-bomb", _bomb(tmp / "bomb.pth"), "compressed-storage", "is compressed"),
        ("overlapping", _overlapping(tmp / "overlap.pth"), "overlapping-members", "overlap"),
        ("corrupt-deflate", _corrupt_deflate(tmp / "deflate.pth"), "bad-zip", "'archive/data.pkl' cannot be read"),
        ("legacy", _write(tmp / "legacy.pth", pickled({"w": [1.0]})), "legacy-format",
         "_use_new_zipfile_serialization=True"),
        ("not-zip", _write(tmp / "text.pth", b"hello"), "not-zip", "no zip header"),
        ("bad-zip", _write(tmp / "cut.pth", _zip_bytes(plain)[:60]), "bad-zip", "not a readable zip archive"),
    ]
    return cases


def _deep_lists(depth):
    """[[[...]]] ``depth`` deep: ``depth`` empty lists pushed, then each APPENDed into the one below."""
    return EMPTY_LIST * depth + APPEND * (depth - 1)


def _write(path, raw):
    path.write_bytes(raw)
    return path


def _zip_bytes(pickled_bytes):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickled_bytes)
        archive.writestr("archive/data/0", FLOATS)
    return buffer.getvalue()


def _duplicate(path, pickled_bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled_bytes)
        archive.writestr("archive/data/0", FLOATS)
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("archive/data/0", b"\x00" * 24)
    return path


def _bomb(path):
    """A 1 GiB storage of zeros, deflated to about 1 MB, declared as 2**28 floats."""
    numel = BOMB_BYTES // 4
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("archive/data.pkl", state_dict({"w": tensor("0", numel, [numel])}))
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            chunk = bytes(2**24)
            for _ in range(BOMB_BYTES // len(chunk)):
                member.write(chunk)
    return path


def _corrupt_deflate(path):
    """data.pkl deflated, its compressed bytes then overwritten (the CRC and sizes kept)."""
    torch_zip(path, state_dict({"w": tensor("0", 6, [6])}) * 4, {"0": FLOATS}, compression=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    start = 30 + len("archive/data.pkl")                     # the first member's data, after its local header
    data[start:start + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    return path


def _overlapping(path):
    """Two storage members whose central-directory entries point at the same local header."""
    torch_zip(path, state_dict({"a": tensor("0", 6, [6]), "b": tensor("1", 6, [6])}), {"0": FLOATS, "1": FLOATS})
    data = bytearray(path.read_bytes())
    first = zipfile.ZipFile(path).getinfo("archive/data/0").header_offset
    entry = data.find(b"PK\x01\x02")
    while entry >= 0:                               # central directory entries: name length at +28, name at +46
        length = int.from_bytes(data[entry + 28:entry + 30], "little")
        if data[entry + 46:entry + 46 + length] == b"archive/data/1":
            data[entry + 42:entry + 46] = first.to_bytes(4, "little")
        entry = data.find(b"PK\x01\x02", entry + 46)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    canary = tmp / "CANARY"
    return tmp, canary, hostile_cases(tmp, canary)


def test_each_hostile_file_gives_its_own_error_and_runs_nothing(corpus):
    tmp, canary, cases = corpus
    before = sorted(os.listdir(tmp))
    for label, path, reason, words in cases:
        with pytest.raises(TorchFileError) as caught:
            numgpt.load_torch(path)
        print(f"{label:28s} {caught.value}"[:200])
        assert caught.value.reason == reason, (label, str(caught.value))
        assert words in str(caught.value) and str(path) in str(caught.value), (label, str(caught.value))
    assert not canary.exists()
    assert sorted(os.listdir(tmp)) == before                     # nothing written beside the files


def test_the_command_refuses_them_in_one_line_and_writes_nothing(corpus, tmp_path, capsys):
    """numgpt convert on each file (but the million-opcode ones: the same reader, seconds each)."""
    _, canary, cases = corpus
    for label, path, _, words in cases:
        if label in MILLION_OPCODES:
            continue
        out = tmp_path / label
        assert cli.main(["convert", str(path), "--out", str(out)]) == 2, label
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words.splitlines()[0] in err, (label, err)
        assert not out.exists()
    assert os.listdir(tmp_path) == [] and not canary.exists()


def test_a_data_pkl_over_the_limit_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_format, "MAX_PICKLE_BYTES", 2**16)
    path = torch_zip(tmp_path / "big.pth", PROTO2 + text("x" * 2**16) + STOP)
    with pytest.raises(TorchFileError, match=r"data.pkl' holds 65544 bytes; expected at most 65536"):
        numgpt.load_torch(path)


# ---------------------------------------------------------------- memory bounded by the file

MEMORY_PROBE = textwrap.dedent("""
    import sys
    import numgpt
    def peak():
        return int([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]) * 1024
    before = peak()
    try:
        numgpt.load_torch(sys.argv[1])
        print("accepted")
    except numgpt.NumgptError as error:
        print("refused", error.reason)
    print(peak() - before)
""")


@pytest.mark.parametrize("label", ["zip-bomb", "deep-lists", "expanded-view"])
def test_memory_stays_bounded_by_the_file(corpus, label):
    _, _, cases = corpus
    path = next(path for name_, path, _, _ in cases if name_ == label)
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True,
                            timeout=120, check=True)
    verdict, rise = result.stdout.split("\n")[:2]
    size = path.stat().st_size
    print(f"{label}: {verdict}, file {size / 2**20:.2f} MiB, peak rose {int(rise) / 2**20:.1f} MiB")
    assert verdict.startswith("refused")
    assert int(rise) <= 200 * size + 8 * 2**20          # a pickle's objects take ~100 bytes per opcode byte


# ---------------------------------------------------------------- fuzz: nothing but NumgptErrors

OPCODE_BYTES = sorted(torch_format.OPCODES) + sorted(torch_format.REFUSED_NAMES)
ARGUMENTS = st.one_of(st.just(b""), st.binary(max_size=6), st.sampled_from(
    [b"\x00", b"\x01", b"\x00\x00\x00\x00", b"\x03\x00\x00\x00abc", b"torch\nFloatStorage\n",
     b"collections\nOrderedDict\n", b"torch._utils\n_rebuild_tensor_v2\n", b"os\nsystem\n", b"\xff\xff\xff\x7f"]))
PIECES = st.one_of(
    st.tuples(st.sampled_from(OPCODE_BYTES), ARGUMENTS).map(lambda pair: bytes([pair[0]]) + pair[1]),
    st.sampled_from([storage("0", 6), tensor("0", 6, [2, 3]), tensor("0", 6, [3, 2], [1, 3]), ordered_dict(),
                     text("key"), integer(-5), integer(2**40), MARK, TUPLE, SETITEM, APPEND, BUILD, REDUCE,
                     put(0), get(0), EMPTY_DICT, EMPTY_LIST]))


def _refused_or_loaded(path):
    try:
        numgpt.load_torch(path)
    except numgpt.NumgptError:
        pass


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """An open zip holding storage '0' (six floats), for opcode streams run without a zip each."""
    path = torch_zip(tmp_path_factory.mktemp("fuzz") / "base.pth", PROTO2 + EMPTY_DICT + STOP, {"0": FLOATS})
    with open(path, "rb") as file:
        yield torch_format._Archive(path, file)


@settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pieces=st.lists(PIECES, max_size=40), stop=st.booleans())
def test_random_opcode_streams_give_only_numgpt_errors(archive, pieces, stop):
    try:
        torch_format.read_pickle(archive, PROTO2 + b"".join(pieces) + (STOP if stop else b""))
    except numgpt.NumgptError:
        pass


SEEDS = [(FIXTURES / name).read_bytes() for name in ("views.pth", "model.pth")]


@settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.sampled_from(range(len(SEEDS))), edits=st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=4),
              st.sampled_from(["replace", "insert", "delete", "cut"])), min_size=1, max_size=4))
def test_mutations_of_real_files_give_only_numgpt_errors(tmp_path, seed, edits):
    raw = bytearray(SEEDS[seed])
    for where, chunk, how in edits:
        at = int(where * len(raw))
        if how == "replace":
            raw[at:at + len(chunk)] = chunk
        elif how == "insert":
            raw[at:at] = chunk
        elif how == "delete":
            del raw[at:at + len(chunk)]
        else:
            del raw[at:]
    (tmp_path / "mutant.pth").write_bytes(bytes(raw))
    _refused_or_loaded(tmp_path / "mutant.pth")


def test_pickle_stream_mutations_inside_a_valid_zip(tmp_path):
    """Every single-byte change of views.pth's data.pkl, one byte value each: only NumgptErrors."""
    with zipfile.ZipFile(FIXTURES / "views.pth") as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    key = next(member for member in members if member.endswith("/data.pkl"))
    original = members[key]
    rng = np.random.default_rng(0)
    for position in range(len(original)):
        changed = bytearray(original)
        changed[position] = int(rng.integers(256))
        members[key] = bytes(changed)
        path = tmp_path / "one.pth"
        with zipfile.ZipFile(path, "w") as archive:
            for member, raw in members.items():
                archive.writestr(member, raw)
        _refused_or_loaded(path)
