"""numgpt.io.safe_io: hostile safetensors and JSON files each get their own error, pickle-based
files are refused without being unpickled, and valid files round-trip exactly.

The hostile files are built byte by byte here, so each test shows exactly what it feeds in.
"""
import json
import random
import struct
import tempfile
import tracemalloc
import zipfile

import numpy as np
import pytest
from safetensors import SafetensorError, deserialize
from safetensors.numpy import load_file

from numgpt.io import safe_io
from numgpt.io.safe_io import NonFiniteError, PickleFormatError, UnsafeFileError


def safetensors_bytes(header, data=b"", length=None):
    """8-byte little-endian header length + header (a dict, str or bytes) + data."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def write(tmp_path, content, name="hostile.safetensors"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def f32(name_shape_offsets):
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": offsets}
            for name, (shape, offsets) in name_shape_offsets.items()}


def expect(tmp_path, content, reason, tensor=None, **kwargs):
    path = write(tmp_path, content)
    with pytest.raises(UnsafeFileError) as info:
        safe_io.read_safetensors(path, **kwargs)
    assert info.value.reason == reason, str(info.value)
    assert str(path) in str(info.value)
    if tensor is not None:
        assert info.value.tensor == tensor and repr(tensor) in str(info.value)
    return info.value


# ---------------------------------------------------------------- valid files

def test_round_trip_matches_the_safetensors_library(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5),
              "h": np.arange(6, dtype=np.float16).reshape(2, 3), "ids": np.arange(7, dtype=np.int64),
              "mask": np.array([True, False, True]), "empty": np.zeros((0, 3), np.float32),
              "scalar": np.array(2.5, np.float32)}
    path = tmp_path / "ok.safetensors"
    safe_io.write_safetensors(path, arrays, {"note": "hi"})
    loaded, metadata = safe_io.read_safetensors(path)
    reference = load_file(path)
    assert metadata == {"note": "hi"} and set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        assert np.array_equal(loaded[name], array) and np.array_equal(loaded[name], reference[name])
        assert loaded[name].base is None and loaded[name].flags.writeable  # owned, not a view of the file
    assert not list(tmp_path.glob(".*tmp*")), "the temporary file was renamed away"


def test_views_share_one_buffer_the_size_of_the_file(tmp_path):
    path = tmp_path / "v.safetensors"
    safe_io.write_safetensors(path, {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4)})
    loaded, _ = safe_io.read_safetensors(path, copy=False)
    assert np.array_equal(loaded["a"], np.arange(6).reshape(2, 3)) and np.array_equal(loaded["b"], np.ones(4))
    assert loaded["a"].flags.writeable

    def buffer_of(array):
        while isinstance(array, np.ndarray):
            array = array.base
        return array.obj if isinstance(array, memoryview) else array

    assert buffer_of(loaded["a"]) is buffer_of(loaded["b"])
    assert isinstance(buffer_of(loaded["a"]), bytearray) and len(buffer_of(loaded["a"])) == path.stat().st_size


def test_bf16_is_widened_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)
    data = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    path = write(tmp_path, safetensors_bytes({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, data))
    loaded, _ = safe_io.read_safetensors(path)
    assert loaded["x"].dtype == np.float32 and np.array_equal(loaded["x"], values)


def test_write_refuses_tensors_sharing_memory(tmp_path):
    w = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        safe_io.write_safetensors(tmp_path / "tied.safetensors", {"a": w, "b": w})


# ---------------------------------------------------------------- hostile headers

def test_header_larger_than_the_file(tmp_path):
    error = expect(tmp_path, safetensors_bytes({}, length=1000), "header-too-large")
    assert "larger than the file" in str(error)


def test_header_larger_than_the_limit(tmp_path):
    # claims 200 MB; refused from the 8-byte length alone, before anything is allocated
    error = expect(tmp_path, safetensors_bytes("{}", length=200 * 2**20), "header-too-large")
    assert "limit" in str(error)
    expect(tmp_path, safetensors_bytes({"__metadata__": {"a": "x" * 100}}), "header-too-large", max_header_bytes=64)


def test_truncated_file(tmp_path):
    expect(tmp_path, b"\x02\x00\x00", "truncated")


@pytest.mark.parametrize("header", [b"{not json}", b'{"a": ', b"{}}", "{\u00e9}".encode("latin-1")])
def test_header_that_is_not_json(tmp_path, header):
    assert expect(tmp_path, safetensors_bytes(header), {True: "not-utf8", False: "not-json"}[b"\xe9" in header])


@pytest.mark.parametrize("header", ["[1, 2]", '"text"', "3"])
def test_header_that_is_not_an_object(tmp_path, header):
    expect(tmp_path, safetensors_bytes(header), "not-object")


def test_duplicate_keys(tmp_path):
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    header = '{"w": ' + entry + ', "w": ' + entry + "}"
    error = expect(tmp_path, safetensors_bytes(header, b"\0" * 4), "duplicate-key")
    assert "'w'" in str(error)


def test_duplicate_keys_inside_an_entry(tmp_path):
    header = '{"w": {"dtype": "F32", "dtype": "F64", "shape": [1], "data_offsets": [0, 4]}}'
    expect(tmp_path, safetensors_bytes(header, b"\0" * 4), "duplicate-key")


@pytest.mark.parametrize("dtype", ["F128", "float32", "F8_E4M3", 7, None])
def test_unknown_dtype(tmp_path, dtype):
    header = {"w": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}
    expect(tmp_path, safetensors_bytes(header, b"\0" * 4), "unknown-dtype", tensor="w")


@pytest.mark.parametrize("shape", [[-1], [2.0], "4", [True], [[1]], None, {"0": 1}])
def test_shape_not_a_list_of_non_negative_ints(tmp_path, shape):
    header = {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}
    expect(tmp_path, safetensors_bytes(header, b"\0" * 4), "bad-shape", tensor="w")


@pytest.mark.parametrize("offsets", [[0], [0, 4, 8], [4, 0], [0, 400], [-4, 0], ["0", 4], [0.0, 4], None])
def test_offsets_not_within_the_data_section(tmp_path, offsets):
    header = {"w": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}
    expect(tmp_path, safetensors_bytes(header, b"\0" * 4), "bad-offsets", tensor="w")


def test_overlapping_spans(tmp_path):
    header = f32({"a": ([2], [0, 8]), "b": ([2], [4, 12])})
    error = expect(tmp_path, safetensors_bytes(header, b"\0" * 12), "overlap", tensor="b")
    assert "'a'" in str(error)


def test_aliased_spans(tmp_path):
    # two names for the same bytes (what torch's shared storage would give) overlap too
    header = f32({"a": ([2], [0, 8]), "b": ([2], [0, 8])})
    expect(tmp_path, safetensors_bytes(header, b"\0" * 8), "overlap")


def test_gap_between_spans(tmp_path):
    header = f32({"a": ([2], [0, 8]), "b": ([2], [12, 20])})
    expect(tmp_path, safetensors_bytes(header, b"\0" * 20), "gap", tensor="b")


def test_gap_at_the_start_and_trailing_bytes(tmp_path):
    expect(tmp_path, safetensors_bytes(f32({"a": ([1], [4, 8])}), b"\0" * 8), "gap", tensor="a")
    expect(tmp_path, safetensors_bytes(f32({"a": ([1], [0, 4])}), b"\0" * 12), "gap")


def test_span_size_does_not_match_shape_and_dtype(tmp_path):
    error = expect(tmp_path, safetensors_bytes(f32({"a": ([3], [0, 8])}), b"\0" * 8), "size-mismatch", tensor="a")
    assert "12 bytes" in str(error)


def test_huge_shape_is_a_size_mismatch_not_an_allocation(tmp_path):
    header = f32({"a": ([2**40, 2**40], [0, 8])})
    expect(tmp_path, safetensors_bytes(header, b"\0" * 8), "size-mismatch", tensor="a")


def test_entry_with_unknown_or_missing_fields(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "code": "rm -rf"}}
    expect(tmp_path, safetensors_bytes(header, b"\0" * 4), "bad-entry", tensor="w")
    expect(tmp_path, safetensors_bytes({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "bad-entry", tensor="w")
    expect(tmp_path, safetensors_bytes({"w": [1, 2]}, b""), "bad-entry", tensor="w")


def test_metadata_must_be_strings(tmp_path):
    expect(tmp_path, safetensors_bytes({"__metadata__": {"a": 1}}), "bad-metadata")
    expect(tmp_path, safetensors_bytes({"__metadata__": ["a"]}), "bad-metadata")


def test_bool_tensor_with_other_bytes(tmp_path):
    header = {"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}
    expect(tmp_path, safetensors_bytes(header, b"\x01\x07"), "bad-bool", tensor="m")


def test_deeply_nested_header(tmp_path):
    expect(tmp_path, safetensors_bytes('{"a":' + "[" * 100000 + "]" * 100000 + "}"), "not-json")


def test_random_corruptions_only_ever_raise_unsafe_file_error(tmp_path):
    path = tmp_path / "good.safetensors"
    safe_io.write_safetensors(path, {"a": np.ones((3, 5), np.float32), "b": np.arange(4, dtype=np.int64)})
    good = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", good[:8])[0]
    rng = random.Random(0)
    refused = 0
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data) if rng.random() < 0.3 else header_end)] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[:rng.randrange(len(data))]
        try:
            safe_io.parse_safetensors(bytes(data), "fuzz")
        except UnsafeFileError:
            refused += 1
    assert refused > 100


# ---------------------------------------------------------------- non-finite tensors

def test_check_finite_names_every_bad_tensor():
    arrays = {"ok": np.ones(3, np.float32), "nan": np.array([1.0, np.nan]), "inf": np.array([np.inf], np.float32),
              "ids": np.arange(3)}
    with pytest.raises(NonFiniteError) as info:
        safe_io.check_finite(arrays, "weights.safetensors")
    assert info.value.tensors == ["nan", "inf"]
    assert "weights.safetensors" in str(info.value) and "'ok'" not in str(info.value)
    safe_io.check_finite({"ok": np.ones(2)}, "fine")


# ---------------------------------------------------------------- pickle-based formats

def torch_like_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/version", b"3\n")
    return path


@pytest.mark.parametrize("name, content", [
    ("model.pkl", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94."),
    ("model.pkl", b"(dp0\n."),  # protocol 0, recognised by its suffix
    ("model.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"),
])
def test_pickle_and_npy_files_are_refused(tmp_path, name, content):
    path = write(tmp_path, content, name)
    with pytest.raises(PickleFormatError, match="does not load pickle-based formats.*safetensors"):
        safe_io.read_safetensors(path)


def test_torch_zip_is_refused(tmp_path):
    path = torch_like_zip(tmp_path / "model.pt")
    with pytest.raises(PickleFormatError, match="zip archive"):
        safe_io.read_safetensors(path)
    with pytest.raises(PickleFormatError):
        safe_io.check_not_pickle(path)


def test_safetensors_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    pad = " " * (0x280 - len('{"__metadata__":{"a":"b"}}'))
    header = '{"__metadata__":{"a":"b"}}' + pad        # length 0x280: the file starts with bytes 80 02
    content = safetensors_bytes(header)
    assert content[:2] == b"\x80\x02"
    assert safe_io.read_safetensors(write(tmp_path, content)) == ({}, {"a": "b"})


# ---------------------------------------------------------------- JSON

def read_json_error(tmp_path, content, **kwargs):
    path = write(tmp_path, content, "state.json")
    with pytest.raises(UnsafeFileError) as info:
        safe_io.read_json(path, **kwargs)
    assert str(path) in str(info.value)
    return info.value


def test_read_json_valid(tmp_path):
    path = write(tmp_path, b'{"a": [1, 2.5, null], "b": {"c": "d"}}', "ok.json")
    assert safe_io.read_json(path) == {"a": [1, 2.5, None], "b": {"c": "d"}}


def test_read_json_errors(tmp_path):
    assert read_json_error(tmp_path, b'{"a": 1, "a": 2}').reason == "duplicate-key"
    assert read_json_error(tmp_path, b'{"a": {"b": 1, "b": 1}}').reason == "duplicate-key"
    error = read_json_error(tmp_path, b'{\n "a": 1,\n "b": }')
    assert error.reason == "not-json" and "line 3" in str(error)
    error = read_json_error(tmp_path, b'{"a": "\xff"}')
    assert error.reason == "not-utf8" and "offset 7" in str(error)
    assert read_json_error(tmp_path, b'{"a": NaN}').reason == "non-finite-json"
    assert read_json_error(tmp_path, b"[" * 100000 + b"]" * 100000).reason == "not-json"
    assert read_json_error(tmp_path, b'{"a": "' + b"x" * 200 + b'"}', max_bytes=100).reason == "too-large"
    assert safe_io.read_json(write(tmp_path, b"[NaN, Infinity]", "nan.json"), allow_nan=True)[1] == float("inf")


# ---------------------------------------------------------------- the library's checks and numgpt's

def library_verdict(data):
    """safetensors.deserialize on the bytes themselves (a second way into the library):
    None when it accepts them, else its message without the 'Error while deserializing...:' prefix."""
    try:
        deserialize(bytes(data))
        return None
    except SafetensorError as error:
        return str(error).split(": ", 1)[1]


def stand_in_verdict(data):
    """The library's verdict as parse_safetensors obtains it: through a sparse stand-in file."""
    header_len = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    refusal = safe_io._library_refusal_of_bytes(bytes(data[:8 + header_len]), len(data))
    return None if refusal is None else refusal.split(": ", 1)[1]


HOSTILE = [
    safetensors_bytes({}, length=1000), b"\x02\x00\x00", safetensors_bytes(b'{"a": '),
    safetensors_bytes("[1, 2]"), safetensors_bytes(f32({"a": ([2], [0, 8]), "b": ([2], [4, 12])}), b"\0" * 12),
    safetensors_bytes(f32({"a": ([2], [0, 8]), "b": ([2], [12, 20])}), b"\0" * 20),
    safetensors_bytes(f32({"a": ([1], [0, 4])}), b"\0" * 12), safetensors_bytes(f32({"a": ([3], [0, 8])}), b"\0" * 8),
    safetensors_bytes(f32({"a": ([2**40, 2**40], [0, 8])}), b"\0" * 8),
    safetensors_bytes({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    safetensors_bytes({"__metadata__": {"a": 1}}),
]


def test_the_stand_in_gets_the_librarys_verdict_on_the_real_bytes(tmp_path):
    path = tmp_path / "good.safetensors"
    safe_io.write_safetensors(path, {"a": np.ones((3, 5), np.float32), "b": np.arange(4, dtype=np.int64)})
    good = path.read_bytes()
    rng = random.Random(1)
    corpus = [good] + HOSTILE
    for _ in range(200):
        data = bytearray(good)
        data[rng.randrange(8 + struct.unpack("<Q", good[:8])[0])] = rng.randrange(256)
        corpus.append(bytes(data[:rng.randrange(len(data))] if rng.random() < 0.2 else data))
    verdicts = [(library_verdict(data), stand_in_verdict(data)) for data in corpus]
    assert all(on_bytes == on_stand_in for on_bytes, on_stand_in in verdicts), \
        [v for v in verdicts if v[0] != v[1]][:3]
    assert sum(on_bytes is not None for on_bytes, _ in verdicts) > 50       # the corpus holds refusals


@pytest.mark.parametrize("content, reason, tensor", [
    (safetensors_bytes('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                       '"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
     "duplicate-key", None),
    (safetensors_bytes({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, b"\0" * 4),
     "bad-entry", "w"),
    (safetensors_bytes({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4),
     "unknown-dtype", "w"),
    (safetensors_bytes({"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x07"), "bad-bool", "m"),
], ids=["duplicate-key", "unknown-field", "float8", "bool-byte"])
def test_numgpt_refuses_what_the_library_lets_through(tmp_path, content, reason, tensor):
    assert library_verdict(content) is None
    error = expect(tmp_path, content, reason, tensor)
    assert "(safetensors: " not in str(error)                          # numgpt's own finding


def test_a_file_the_library_refuses_is_refused_even_when_numgpt_finds_no_fault(tmp_path, monkeypatch):
    path = tmp_path / "ok.safetensors"
    safe_io.write_safetensors(path, {"a": np.ones(3, np.float32)})
    monkeypatch.setattr(safe_io, "_library_refusal", lambda file: "a refusal of the library's")
    with pytest.raises(UnsafeFileError, match=r"\(safetensors: a refusal of the library's\)") as info:
        safe_io.read_safetensors(path)
    assert info.value.reason == "refused"


def test_a_refusal_keeps_the_librarys_message(tmp_path):
    error = expect(tmp_path, safetensors_bytes(f32({"a": ([2], [0, 8]), "b": ([2], [12, 20])}), b"\0" * 20), "gap",
                   tensor="b")
    assert "bytes [8, 12) before this tensor belong to no tensor (safetensors: " in str(error)
    assert "invalid offset for tensor `b`" in str(error)


def test_bytes_are_judged_without_a_second_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = tmp_path / "big.safetensors"
    safe_io.write_safetensors(path, {"a": np.ones((1024, 2048), np.float32), "b": np.zeros(7, np.int64)})
    data = safe_io.read_bytes(path)                                    # 8 MiB
    tracemalloc.start()
    try:
        arrays, _ = safe_io.parse_safetensors(data, path, copy=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(data) / 20, f"parsing allocated {peak} bytes for a file of {len(data)}"
    assert arrays["a"].sum() == 1024 * 2048
    assert list((tmp_path / "tmp").iterdir()) == []                    # the stand-in is gone
