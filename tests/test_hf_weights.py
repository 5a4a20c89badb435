"""numgpt.io.hf_weights: Hugging Face weight directories (one model.safetensors, or shards
and model.safetensors.index.json) read and written one tensor at a time.

The files the reader is tested on are written here by hand (``write_raw``: the
safetensors layout byte by byte), by the safetensors library, or by transformers
(tests/reference/hf_llama/qwen2_tiny, sharded BF16). The expected float values
of BF16 and F16 bits are decoded here from sign, exponent and mantissa in
float64, independently of the shift the loader uses.
"""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from numgpt.io.hf_weights import (INDEX_FILE, SINGLE_FILE, TensorInfo, WeightsError, bfloat16_bits, load_weights,
                                  save_weights, tensor_index, weight_files)
from numgpt.nn.layers import Parameter

QWEN2_TINY = Path(__file__).parent / "reference" / "hf_llama" / "qwen2_tiny"   # sharded BF16, by transformers


# ---------------------------------------------------------------- helpers, independent of numgpt

def write_raw(path, tensors, metadata=None):
    """A safetensors file by hand: ``tensors`` {name: (dtype name, shape, raw little-endian bytes)}."""
    header, offset = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for _, _, data in tensors.values():
            f.write(data)
    return path


def bf16_round_nearest_even(values):
    """bfloat16 bits of float32 ``values``: keep the upper 16 bits, round up when the dropped
    lower 16 bits are above half, or exactly half and the kept part is odd."""
    bits = np.asarray(values, np.float32).view(np.uint32).astype(np.int64)
    upper, lower = bits >> 16, bits & 0xFFFF
    up = (lower > 0x8000) | ((lower == 0x8000) & (upper % 2 == 1))
    return (upper + up).astype(np.uint16)


def decode_bf16(bits):
    """float64 values of bfloat16 bits: sign, 8 exponent bits, 7 mantissa bits."""
    bits = np.asarray(bits, np.int64)
    sign = np.where(bits >> 15, -1.0, 1.0)
    exponent, mantissa = (bits >> 7) & 0xFF, bits & 0x7F
    normal = np.ldexp(1.0 + mantissa / 128.0, exponent - 127)
    subnormal = np.ldexp(mantissa / 128.0, -126)
    value = np.where(exponent == 0, subnormal, normal)
    value = np.where((exponent == 0xFF) & (mantissa == 0), np.inf, value)
    return sign * np.where((exponent == 0xFF) & (mantissa != 0), np.nan, value)


def params_like(arrays, dtype=np.float32):
    return {name: Parameter(np.zeros(np.shape(a), dtype)) for name, a in arrays.items()}


def sample_state(seed=0):
    rng = np.random.default_rng(seed)
    return {"model.embed_tokens.weight": rng.standard_normal((11, 6)).astype(np.float32),
            "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((6, 6)).astype(np.float32),
            "model.layers.0.input_layernorm.weight": rng.standard_normal(6).astype(np.float32),
            "model.norm.weight": rng.standard_normal(6).astype(np.float32),
            "lm_head.weight": rng.standard_normal((11, 6)).astype(np.float32),
            "scalar": np.array(1.5, np.float32)}


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_one_file(tmp_path, dtype):
    state = sample_state()
    assert save_weights(state, tmp_path) == [tmp_path / SINGLE_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == [SINGLE_FILE]
    by_library = load_file(tmp_path / SINGLE_FILE)                     # another reader agrees on the bytes
    assert set(by_library) == set(state)
    for name, array in state.items():
        assert by_library[name].dtype == np.float32 and np.array_equal(by_library[name], array), name
    params = params_like(state, dtype)
    assert load_weights(params, tmp_path) == list(state)
    for name, array in state.items():
        assert params[name].data.dtype == dtype and np.array_equal(params[name].data, array), name
    assert weight_files(tmp_path) == [tmp_path / SINGLE_FILE]
    assert tensor_index(tmp_path) == {name: TensorInfo(tmp_path / SINGLE_FILE, "F32", a.shape)
                                      for name, a in state.items()}


def test_round_trip_sharded_as_huggingface_hub_splits(tmp_path):
    rng = np.random.default_rng(1)
    state = {"a": rng.standard_normal(10).astype(np.float32),        # 40 bytes each, 200 for "big"
             "b": rng.standard_normal(10).astype(np.float32),
             "big": rng.standard_normal((5, 10)).astype(np.float32),
             "c": rng.standard_normal(10).astype(np.float32),
             "d": rng.standard_normal((2, 5)).astype(np.float32)}
    written = save_weights(state, tmp_path, max_shard_bytes=100)
    # "big" does not fit any shard: it gets one of its own at once, and the shard being filled goes on
    shards = {"model-00001-of-00003.safetensors": ["big"], "model-00002-of-00003.safetensors": ["a", "b"],
              "model-00003-of-00003.safetensors": ["c", "d"]}
    assert written == [tmp_path / name for name in shards] + [tmp_path / INDEX_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*shards, INDEX_FILE])
    index_text = (tmp_path / INDEX_FILE).read_text()
    index = json.loads(index_text)
    assert index == {"metadata": {"total_parameters": 90, "total_size": 360},
                     "weight_map": {t: name for name, tensors in shards.items() for t in tensors}}
    assert index_text == json.dumps(index, indent=2, sort_keys=True) + "\n"      # as transformers writes it
    for name, tensors in shards.items():
        by_library = load_file(tmp_path / name)
        assert sorted(by_library) == sorted(tensors)
    params = params_like(state)
    assert sorted(load_weights(params, tmp_path)) == sorted(state)
    for name, array in state.items():
        assert np.array_equal(params[name].data, array), name
    assert weight_files(tmp_path) == [tmp_path / name for name in sorted(shards)]
    assert {n: i.path.name for n, i in tensor_index(tmp_path).items()} == index["weight_map"]


def test_a_new_export_removes_the_files_of_the_old_one(tmp_path):
    state = sample_state()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not ours")
    save_weights(state, tmp_path, max_shard_bytes=200)
    three = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(three) >= 3 and (tmp_path / INDEX_FILE).exists()
    save_weights(state, tmp_path, max_shard_bytes=600)                  # fewer shards: the -of-0000N names change
    two = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(two) < len(three) and not set(two) & set(three)
    params = params_like(state)
    load_weights(params, tmp_path)
    save_weights({name: 2 * a for name, a in state.items()}, tmp_path)  # now one file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", SINGLE_FILE, "pytorch_model.bin"]
    load_weights(params, tmp_path)
    assert np.array_equal(params["lm_head.weight"].data, 2 * state["lm_head.weight"])
    save_weights(state, tmp_path, max_shard_bytes=200)                  # and sharded again: no model.safetensors
    assert not (tmp_path / SINGLE_FILE).exists() and (tmp_path / INDEX_FILE).exists()
    load_weights(params, tmp_path)
    assert np.array_equal(params["lm_head.weight"].data, state["lm_head.weight"])


def test_model_safetensors_wins_over_an_index_as_in_transformers(tmp_path):
    save_weights(sample_state(), tmp_path, max_shard_bytes=200)
    write_raw(tmp_path / SINGLE_FILE, {"x": ("F32", (1,), np.float32([3]).tobytes())})
    assert list(tensor_index(tmp_path)) == ["x"]


# ---------------------------------------------------------------- dtypes

EDGE_VALUES = np.array([0.0, -0.0, 1.0, -2.5, 3.14159265, 1e-3, -7e5, 3.3e38, -3.3e38, 1e-40, -1e-45,
                        1.17549435e-38, 65504.0, 1e-8, 0.1, 1 / 3], np.float32)


def ties():
    """float32 values whose lower 16 bits are exactly 0x8000: halfway between two bfloat16 values,
    with an even and with an odd upper half."""
    upper = np.array([0x3F80, 0x3F81, 0xC2F6, 0xC2F7, 0x0001, 0x7F7E], np.uint32)    # even, odd, ...
    return ((upper << 16) | 0x8000).view(np.float32)


def test_bf16_and_f16_are_widened_exactly(tmp_path):
    rng = np.random.default_rng(2)
    values = np.concatenate([EDGE_VALUES, ties(), rng.standard_normal(200).astype(np.float32)]).reshape(-1, 6)
    bf16 = bf16_round_nearest_even(values)                       # (n, 4) uint16
    f16 = rng.standard_normal((8, 3)).astype(np.float16)
    f64 = rng.standard_normal(5)
    write_raw(tmp_path / SINGLE_FILE, {"bf16": ("BF16", bf16.shape, bf16.astype("<u2").tobytes()),
                                       "f16": ("F16", f16.shape, f16.astype("<f2").tobytes()),
                                       "f64": ("F64", f64.shape, f64.astype("<f8").tobytes())})
    expected = {"bf16": decode_bf16(bf16), "f16": f16.astype(np.float64), "f64": f64}
    assert np.isfinite(expected["bf16"]).all()
    for dtype in (np.float32, np.float64):
        params = {name: Parameter(np.full(e.shape, -99, dtype)) for name, e in expected.items()}
        load_weights(params, tmp_path)
        for name, want in expected.items():
            got = params[name].data
            want = want.astype(dtype)                            # exact for bf16/f16; f64 rounds into float32
            worst = np.max(np.abs(got.astype(np.float64) - want))
            print(f"{name} -> {np.dtype(dtype).name}: worst |error| {worst:.3g}")
            assert got.dtype == dtype and np.array_equal(got, want), name
            assert np.array_equal(np.signbit(got), np.signbit(want)), name      # -0.0 stays -0.0
    assert tensor_index(tmp_path)["bf16"] == TensorInfo(tmp_path / SINGLE_FILE, "BF16", bf16.shape)


def test_bfloat16_export_rounds_to_nearest_even(tmp_path):
    rng = np.random.default_rng(3)
    values = np.concatenate([EDGE_VALUES, ties(), rng.standard_normal(300).astype(np.float32)])
    values = np.concatenate([values, [np.float32(3.4e38), np.inf, -np.inf]]).astype(np.float32)
    expected = bf16_round_nearest_even(values)
    assert expected[-3] == 0x7F80                                  # 3.4e38 rounds up to Inf, as in torch
    assert np.array_equal(bfloat16_bits(values), expected)
    assert np.array_equal(bfloat16_bits(ties()), [0x3F80, 0x3F82, 0xC2F6, 0xC2F8, 0x0002, 0x7F7E])
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF], np.uint32).view(np.float32)
    assert np.isnan(decode_bf16(bfloat16_bits(nans))).all()       # a NaN never rounds to Inf (nor wraps to 0)

    state = {"w": values[:-3]}
    save_weights(state, tmp_path, dtype="bfloat16")
    assert tensor_index(tmp_path)["w"].dtype == "BF16"
    raw = (tmp_path / SINGLE_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8:8 + header_len])["w"]["data_offsets"]
    on_disk = np.frombuffer(raw[8 + header_len + begin:8 + header_len + end], "<u2")
    assert np.array_equal(on_disk, expected[:-3])
    params = params_like(state)
    load_weights(params, tmp_path)
    assert np.array_equal(params["w"].data.ravel(), decode_bf16(expected[:-3]).astype(np.float32))


# ---------------------------------------------------------------- problems

def test_every_problem_is_reported_in_one_error(tmp_path):
    good = np.arange(6, dtype=np.float32).reshape(2, 3)
    bad = np.array([1, np.nan, np.inf, -np.inf, np.nan], np.float32)
    write_raw(tmp_path / SINGLE_FILE, {
        "good": ("F32", (2, 3), good.tobytes()),
        "misshapen": ("F32", (3, 2), good.tobytes()),
        "ints": ("I64", (2,), np.array([1, 2], "<i8").tobytes()),
        "not_finite": ("F32", (5,), bad.tobytes()),
        "surplus": ("F32", (2, 3), good.tobytes()),
        "model.layers.0.self_attn.rotary_emb.inv_freq": ("F32", (2,), np.ones(2, np.float32).tobytes()),
    })
    params = {"good": Parameter(np.zeros((2, 3), np.float32)), "misshapen": Parameter(np.zeros((2, 3), np.float32)),
              "ints": Parameter(np.zeros(2, np.float32)), "not_finite": Parameter(np.zeros(5, np.float32)),
              "absent": Parameter(np.zeros((4, 7), np.float32))}
    with pytest.raises(WeightsError) as error:
        load_weights(params, tmp_path, ignore=re.compile(r"rotary_emb\.inv_freq$"))
    message = str(error.value)
    print(message)
    assert str(tmp_path) in message and "(5 problems)" in message
    for line in ("missing: absent (expected shape (4, 7))",
                 "unexpected: surplus (2, 3)",
                 "misshapen: misshapen: expected (2, 3), got (3, 2)",
                 "unsupported dtype: ints is I64 (expected one of BF16, F16, F32, F64)",
                 "not finite: not_finite holds 2 NaN and 2 Inf"):
        assert f"\n  {line}" in message, line
    assert "inv_freq" not in message
    assert np.array_equal(params["good"].data, good)              # what fits was copied all the same


S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


@pytest.mark.parametrize("shards, weight_map, words", [
    ({S1: ["x"]}, {"x": "../outside.safetensors"}, ["x: shard '../outside.safetensors' is not a plain file name"]),
    ({S1: ["x"]}, {"x": "/tmp/outside.safetensors"}, ["x: shard '/tmp/outside.safetensors' is not a plain"]),
    ({S1: ["x"]}, {"x": "sub/" + S1}, [f"x: shard 'sub/{S1}' is not a plain file name"]),
    ({S1: ["x"]}, {"x": ".."}, ["x: shard '..' is not a plain file name"]),
    ({S1: ["x"]}, {"x": "pytorch_model.bin"}, ["x: shard 'pytorch_model.bin' is not a .safetensors file"]),
    ({S1: ["x"]}, {"x": S1, "y": S2}, ["names shard(s) missing from", f": {S2} (the directory holds 1 of its 2"]),
    ({S1: ["x"], S2: ["y"]}, {"x": S2, "y": S1}, [f"x: the index puts it in {S2}, but it is in {S1}",
                                                  f"y: the index puts it in {S1}, but it is in {S2}", "(2 problems)"]),
    ({S1: ["x"], S2: ["y"]}, {"x": S1, "y": S2, "z": S2}, [f"z: the index puts it in {S2}, but no shard holds it"]),
    ({S1: ["x", "y"]}, {"x": S1}, [f"y: in {S1}, but not in the index"]),
], ids=["dot-dot", "absolute", "subfolder", "parent", "bin", "missing-shard", "wrong-shard", "absent-tensor",
        "unlisted-tensor"])
def test_a_hostile_or_broken_index_is_refused(tmp_path, shards, weight_map, words):
    model = tmp_path / "model"
    model.mkdir()
    one = np.ones(2, np.float32).tobytes()
    write_raw(tmp_path / "outside.safetensors", {"x": ("F32", (2,), one)})      # exists, outside the directory
    for shard, names in shards.items():
        write_raw(model / shard, {name: ("F32", (2,), one) for name in names})
    (model / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": 16}, "weight_map": weight_map}))
    with pytest.raises(WeightsError) as error:
        tensor_index(model)
    message = str(error.value)
    print(message)
    assert str(model / INDEX_FILE) in message
    for fragment in words:
        assert fragment in message, fragment
    with pytest.raises(WeightsError):
        load_weights({"x": Parameter(np.zeros(2, np.float32))}, model)


def test_a_tensor_in_two_shards_is_refused(tmp_path):
    one = np.ones(2, np.float32).tobytes()
    write_raw(tmp_path / S1, {"x": ("F32", (2,), one)})
    write_raw(tmp_path / S2, {"x": ("F32", (2,), one), "y": ("F32", (2,), one)})
    (tmp_path / INDEX_FILE).write_text(json.dumps({"weight_map": {"x": S1, "y": S2}}))
    with pytest.raises(WeightsError, match="x: in two shards, model-00001-of-00002.safetensors and "
                                           "model-00002-of-00002.safetensors"):
        weight_files(tmp_path)


@pytest.mark.parametrize("text, words", [
    ('{"weight_map": ["a"]}', 'expected a JSON object with a "weight_map" object'),
    ('[1, 2]', 'expected a JSON object with a "weight_map" object'),
    ('{"weight_map": {"x": 3}}', 'expected a JSON object with a "weight_map" object'),
    ('{"weight_map": {"x": "a.safetensors", "x": "b.safetensors"}}', "duplicate key 'x'"),
    ('{"weight_map": {', "not valid JSON"),
])
def test_an_index_that_is_not_an_index_is_refused(tmp_path, text, words):
    (tmp_path / INDEX_FILE).write_text(text)
    with pytest.raises(WeightsError, match=re.escape(words)) as error:
        weight_files(tmp_path)
    assert str(tmp_path / INDEX_FILE) in str(error.value)


def test_hostile_headers_and_pickles_are_refused_before_reading(tmp_path):
    with open(tmp_path / SINGLE_FILE, "wb") as f:                  # a header "longer" than the file
        f.write((2**40).to_bytes(8, "little") + b'{"x": 1}')
    with pytest.raises(WeightsError, match=rf"{re.escape(str(tmp_path / SINGLE_FILE))}.*header length") as error:
        tensor_index(tmp_path)
    print(error.value)
    (tmp_path / SINGLE_FILE).write_bytes(b"\x80\x02}q\x00." + b"\0" * 16)      # a pickle in disguise
    with pytest.raises(WeightsError, match="pickle"):
        load_weights({}, tmp_path)


def test_a_directory_without_safetensors_says_what_it_holds(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(WeightsError) as error:
        weight_files(tmp_path)
    message = str(error.value)
    assert f"{tmp_path} holds no safetensors weights: expected model.safetensors, or model.safetensors.index.json" \
        in message
    assert "It holds: config.json, pytorch_model.bin." in message
    assert "does not load pickle-based weights (pytorch_model.bin)" in message
    with pytest.raises(WeightsError, match="is not a directory"):
        weight_files(tmp_path / "config.json")


# ---------------------------------------------------------------- memory

MEASURE = """
import json, sys
import numpy as np
from numgpt.io.hf_weights import load_weights
from numgpt.nn.layers import Parameter

def high_water_mark():
    # the peak resident set of this process's memory, in bytes: Linux's VmHWM. ru_maxrss is the same
    # peak, but Linux carries it over from the parent across fork and exec, so it can start at pytest's.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

directory, shapes = sys.argv[1], json.loads(sys.argv[2])
base = high_water_mark()
params = {name: Parameter(np.ones(shape, np.float32)) for name, shape in shapes.items()}   # touched: resident
model_bytes = sum(p.data.nbytes for p in params.values())
load_weights(params, directory)
peak = high_water_mark()
total = float(sum(p.data.sum(dtype=np.float64) for p in params.values()))
print(json.dumps({"base": base, "peak": peak, "model_bytes": model_bytes, "total": total}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures VmHWM in /proc/self/status (Linux)")
def test_loading_bf16_into_float32_stays_within_one_and_a_half_models(tmp_path):
    """About 120 MB of BF16 widened into 240 MB of float32 parameters, in a fresh process: the
    high-water mark grows by the parameters and a few MiB, never by a copy of the file."""
    shapes = {"model.embed_tokens.weight": [32768, 1024], "model.norm.weight": [1024]}
    shapes.update({f"model.layers.{i}.mlp.up_proj.weight": [3072, 1024] for i in range(8)})
    rng = np.random.default_rng(4)
    header, offset, total = {}, 0, 0.0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header).encode()
    with open(tmp_path / SINGLE_FILE, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for shape in shapes.values():
            n = math.prod(shape)
            for start in range(0, n, 1 << 22):                      # 4 Mi values at a time
                bits = rng.integers(0, 1 << 16, min(1 << 22, n - start), dtype=np.uint16) & 0xBFFF   # |x| < 2
                total += float(decode_bf16(bits).sum())
                f.write(bits.astype("<u2").tobytes())
    result = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path), json.dumps(shapes)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    growth = measured["peak"] - measured["base"]
    ratio = growth / measured["model_bytes"]
    print(f"file {offset / 2**20:.0f} MiB BF16, parameters {measured['model_bytes'] / 2**20:.0f} MiB float32, "
          f"peak RSS growth {growth / 2**20:.0f} MiB = {ratio:.3f} x the float32 model")
    assert measured["total"] == pytest.approx(total, rel=1e-9)      # the values arrived
    assert 0.95 <= ratio <= 1.5


# ---------------------------------------------------------------- transformers' own files

def read_by_hand(path):
    """{name: (dtype, shape, raw bytes)} of a safetensors file, parsed here with json alone."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return {name: (e["dtype"], tuple(e["shape"]), raw[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]])
            for name, e in header.items()}


@pytest.mark.skipif(not QWEN2_TINY.is_dir(), reason="tests/reference/hf_llama/qwen2_tiny not made yet")
def test_the_sharded_bf16_fixture_written_by_transformers():
    index = json.loads((QWEN2_TINY / INDEX_FILE).read_text())
    infos = tensor_index(QWEN2_TINY)
    assert set(infos) == set(index["weight_map"])
    assert {name: info.path.name for name, info in infos.items()} == index["weight_map"]
    assert [p.name for p in weight_files(QWEN2_TINY)] == sorted(set(index["weight_map"].values()))
    assert {info.dtype for info in infos.values()} == {"BF16"}
    params = {name: Parameter(np.full(info.shape, np.nan, np.float32)) for name, info in infos.items()}
    assert sorted(load_weights(params, QWEN2_TINY)) == sorted(infos)
    worst = 0.0
    for shard in sorted(set(index["weight_map"].values())):
        for name, (dtype, shape, data) in read_by_hand(QWEN2_TINY / shard).items():
            assert dtype == "BF16" and infos[name].shape == shape
            halves = np.zeros(2 * math.prod(shape), "<u2")            # little-endian float32: low half, high half
            halves[1::2] = np.frombuffer(data, "<u2")
            expected = halves.view("<f4").reshape(shape)
            got = params[name].data
            assert got.dtype == np.float32 and np.array_equal(got, expected), name
            worst = max(worst, float(np.max(np.abs(got - expected), initial=0.0)))
    print(f"qwen2_tiny: {len(infos)} BF16 tensors in {len(weight_files(QWEN2_TINY))} shards, worst |error| {worst}")


def test_a_file_written_by_the_safetensors_library_loads(tmp_path):
    rng = np.random.default_rng(5)
    state = {"a": rng.standard_normal((3, 4)).astype(np.float16), "b": rng.standard_normal(7)}
    save_file(state, str(tmp_path / SINGLE_FILE), metadata={"format": "pt"})
    params = params_like(state, np.float64)
    load_weights(params, tmp_path)
    for name, array in state.items():
        assert np.array_equal(params[name].data, array.astype(np.float64)), name
