"""The bf16 matrix paths (kernels/bf16_detect.py, kernels/bf16_units.py,
kernels/bf16.py) against the NumPy reference numgpt.bf16.matmul_bf16.

What runs where: the detection, the VNNI packing, the scalar twins of both
micro-kernels (through the same driver the hardware kernels use), the
emulated path and the compilation of the hardware kernels' IR for a CPU that
has the instructions run on every machine; the hardware kernels themselves
run only where this CPU has them (skipped elsewhere, with the reason)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

from numgpt.kernels import bf16 as k_bf16
from numgpt.kernels import (
    bf16_detect,
    bf16_units,
)

from numgpt.bf16 import matmul_bf16 as reference_matmul_bf16
from numgpt.bf16 import round_to_bf16, to_bf16_bits
from numgpt.errors import UsageError

HARDWARE_PATHS = ("amx", "avx512_bf16")
# odd shapes (M, K, N): nothing a multiple of 16 or 32, K = 1, one row, K over one KC block
ODD_SHAPES = [(1, 1, 1), (1, 70, 33), (17, 1, 45), (17, 33, 45), (40, 300, 19), (33, 64, 48)]
# |kernel - reference| <= ACCUMULATION_ULPS * K * 2^-24 * (|a| @ |b|), elementwise: two float32
# sums of the same K exact products in different orders (and one with pairs), each within
# K * 2^-24 * sum |products| of the exact sum
ACCUMULATION_ULPS = 2.0


def _operands(shape, seed=0, lead=()):
    M, K, N = shape
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(lead + (M, K)).astype(np.float32),
            rng.standard_normal(lead + (K, N)).astype(np.float32))


def _assert_within_accumulation_error(got, a, b, what):
    reference = reference_matmul_bf16(a, b)
    K = a.shape[-1]
    bound = ACCUMULATION_ULPS * K * 2.0 ** -24 * np.matmul(np.abs(round_to_bf16(a)), np.abs(round_to_bf16(b)))
    worst = np.abs(got.astype(np.float64) - reference)
    ratio = (worst / np.maximum(bound, 1e-30)).max()
    print(f"{what}: worst |error| {worst.max():.3g}, worst error / bound {ratio:.3g}")
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert np.all(worst <= bound), what


# ---------------------------------------------------------------- detection

FEATURES_AMX = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512bf16", "amx-tile", "amx-bf16"}
FEATURES_ZEN4 = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512bf16"}
FEATURES_ZEN3 = {"avx2"}


def _granted():
    return None


def _refused():
    return "arch_prctl(...) refused by the kernel (Invalid argument, errno 22)"


@pytest.mark.parametrize("features, request_amx, name, reason", [
    (FEATURES_AMX, _granted, "amx", "amx-tile and amx-bf16"),
    (FEATURES_AMX, _refused, "avx512_bf16", "AMX unusable: arch_prctl"),
    (FEATURES_ZEN4, _granted, "avx512_bf16", "AMX absent"),
    (FEATURES_ZEN3, _granted, "emulated", "neither amx-bf16 nor avx512bf16; it has avx2"),
    (FEATURES_AMX - {"avx512bf16"}, _refused, "emulated", "AMX unusable"),
])
def test_the_path_follows_the_cpu_features_and_the_kernels_permission(features, request_amx, name, reason):
    path = bf16_detect.choose_path(features, None, request_amx)
    print(path)
    assert path.name == name and reason in path.reason


def test_numgpt_bf16_forces_a_path_the_cpu_has_and_refuses_one_it_lacks():
    assert bf16_detect.choose_path(FEATURES_ZEN3, "emulate", _granted) == ("emulated", "forced by NUMGPT_BF16=emulate")
    assert bf16_detect.choose_path(FEATURES_AMX, "avx512", _granted).name == "avx512_bf16"
    assert bf16_detect.choose_path(FEATURES_AMX, "amx", _granted).name == "amx"
    with pytest.raises(UsageError, match=r"NUMGPT_BF16=amx: this CPU lacks amx-tile, amx-bf16 \(it has avx2, avx512f"):
        bf16_detect.choose_path(FEATURES_ZEN4, "amx", _granted)
    with pytest.raises(UsageError, match=r"NUMGPT_BF16=avx512: this CPU lacks avx512f, avx512bw, avx512vl, avx512bf16 "
                                         r"\(it has avx2\)"):
        bf16_detect.choose_path(FEATURES_ZEN3, "avx512", _granted)
    with pytest.raises(UsageError, match=r"NUMGPT_BF16=amx: the CPU has AMX but arch_prctl"):
        bf16_detect.choose_path(FEATURES_AMX, "amx", _refused)
    with pytest.raises(UsageError, match=r"NUMGPT_BF16='tiles': expected one of amx, avx512, emulate"):
        bf16_detect.choose_path(FEATURES_AMX, "tiles", _granted)


def test_this_hosts_path_and_forcing_on_it():
    """The real host, in a fresh process each: emulate always works; a path the CPU lacks fails
    with the variable, the value and what the CPU has."""
    code = "from numgpt.kernels.bf16 import bf16_path; print(bf16_path())"
    features = bf16_detect.host_features()
    lacking = [value for value, wanted in (("amx", bf16_detect.AMX_FEATURES),
                                           ("avx512", bf16_detect.AVX512_BF16_FEATURES))
               if not set(wanted) <= features]
    runs = {value: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                                  env={**os.environ, "NUMGPT_BF16": value})
            for value in ["emulate"] + lacking[:1]}
    print({value: (run.stdout.strip(), run.stderr.strip().splitlines()[-1:]) for value, run in runs.items()})
    assert runs["emulate"].returncode == 0 and "emulated" in runs["emulate"].stdout
    for value in lacking[:1]:
        assert runs[value].returncode != 0
        assert f"UsageError: NUMGPT_BF16={value}: this CPU lacks" in runs[value].stderr
    print("this host:", bf16_detect.bf16_path())


def test_info_names_the_bf16_path_and_why():
    from numgpt.cli import info
    facts = dict(info.describe())
    path = bf16_detect.bf16_path()
    print(facts["bf16 path"])
    assert facts["bf16 path"] == f"{path.name} ({path.reason})"


# ---------------------------------------------------------------- the hardware kernels' IR

def test_the_amx_kernel_compiles_to_tile_instructions_for_a_cpu_with_amx():
    """Instruction selection only, not numerics: the IR compiles for Sapphire Rapids
    (amx-tile, amx-bf16) to LDTILECFG, TILEZERO, TILELOADD, TDPBF16PS, TILESTORED and
    TILERELEASE. Nothing runs; the numbers are checked by the hardware test where AMX exists."""
    assembly = bf16_units.assembly_for("amx", cpu="sapphirerapids")
    found = {name: len(re.findall(rf"\b{name}\b", assembly))
             for name in ("ldtilecfg", "tilezero", "tileloadd", "tdpbf16ps", "tilestored", "tilerelease")}
    print(found)
    assert found["tdpbf16ps"] == 4 and found["tileloadd"] >= 8 and found["tilestored"] == 4
    assert found["ldtilecfg"] == 1 and found["tilerelease"] == 1 and found["tilezero"] == 4


def test_the_avx512_kernel_compiles_to_vdpbf16ps_for_a_cpu_with_avx512_bf16():
    """Instruction selection only, not numerics: the IR compiles for Sapphire Rapids
    (avx512bf16) to one VDPBF16PS per accumulator (8 x 2) in the inner loop on zmm registers,
    and nothing spills inside that loop. The numbers are checked where the CPU has it."""
    assembly = bf16_units.assembly_for("avx512_bf16", cpu="sapphirerapids")
    dots = re.findall(r"vdpbf16ps\s+%zmm\d+, %zmm\d+, %zmm(\d+)", assembly)
    print(len(dots), "vdpbf16ps, accumulators", sorted(set(map(int, dots))))
    assert len(dots) == bf16_units.AVX512_MR * bf16_units.AVX512_NV
    assert len(set(dots)) == len(dots)                 # 16 distinct accumulator registers
    loop = assembly[assembly.rfind(".p2align", 0, assembly.find("vdpbf16ps")):assembly.rfind("vdpbf16ps")]
    assert "(%rsp)" not in loop


# ---------------------------------------------------------------- packing

def _numpy_pack_a(a, M_pad, K_pad):
    packed = np.zeros(a.shape[:-2] + (M_pad, K_pad), dtype=np.uint16)
    packed[..., :a.shape[-2], :a.shape[-1]] = to_bf16_bits(a)
    return packed


def _numpy_pack_b_vnni(b, K_pad, N_pad):
    """packed[g, j, k2, 2n + t] = B[g, 2 k2 + t, 16 j + n], built by reshapes."""
    G, K, N = b.shape
    full = np.zeros((G, K_pad, N_pad), dtype=np.uint16)
    full[:, :K, :N] = to_bf16_bits(b)
    pairs = full.reshape(G, K_pad // 2, 2, N_pad // 16, 16)            # (g, k2, t, j, n)
    return pairs.transpose(0, 3, 1, 4, 2).reshape(G, N_pad // 16, K_pad // 2, 32)   # (g, j, k2, n t)


@pytest.mark.parametrize("shape", ODD_SHAPES + [(3, 301, 290)])
@pytest.mark.parametrize("layout", ["rows", "transposed", "strided"])
def test_packing_matches_a_numpy_construction(shape, layout):
    """Each of pack_b's loop orders (B's rows contiguous; its columns, as the forward's W.T; neither)."""
    a, b = _operands(shape, lead=(2,))
    if layout == "transposed":                         # A.T and B.T views, as the backward passes them
        a, b = np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2), np.ascontiguousarray(
            b.swapaxes(-1, -2)).swapaxes(-1, -2)
    elif layout == "strided":                          # every other column of a wider array
        a, b = (np.repeat(x, 2, axis=-1)[..., ::2] for x in (a, b))
    M, K, N = shape
    M_pad, K_pad, N_pad = map(bf16_units.padded, (M, K, N))
    packed_a = np.empty((2, M_pad, K_pad), dtype=np.uint16)
    packed_b = np.empty((2, N_pad // 16, K_pad // 2, 32), dtype=np.uint16)
    bf16_units.pack_a(a, packed_a)
    bf16_units.pack_b_vnni(b, packed_b)
    np.testing.assert_array_equal(packed_a, _numpy_pack_a(a, M_pad, K_pad))
    np.testing.assert_array_equal(packed_b, _numpy_pack_b_vnni(b, K_pad, N_pad))


@pytest.mark.parametrize("transposed", [False, True])
def test_packing_takes_bf16_bits_as_they_are(transposed):
    """A B of uint16 bf16 bits (the weight cache's copy on the units' paths) packs to the bits
    its float32 values pack to: no second rounding."""
    _, b = _operands((3, 301, 290), lead=(2,))
    bits = to_bf16_bits(b)
    if transposed:                                     # the forward's W.T
        b, bits = (np.ascontiguousarray(x.swapaxes(-1, -2)).swapaxes(-1, -2) for x in (b, bits))
    K_pad, N_pad = bf16_units.padded(301), bf16_units.padded(290)
    from_floats, from_bits = (np.empty((2, N_pad // 16, K_pad // 2, 32), dtype=np.uint16) for _ in range(2))
    bf16_units.pack_b_vnni(b, from_floats)
    bf16_units.pack_b_vnni(bits, from_bits)
    np.testing.assert_array_equal(from_bits, from_floats)
    np.testing.assert_array_equal(from_bits, _numpy_pack_b_vnni(b, K_pad, N_pad))


def test_the_numba_rounding_is_the_references_bit_for_bit():
    """Ties both ways, values that round up into the next binade and to infinity, NaN, denormals."""
    special = np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 3.3895314e38, np.inf, -np.inf, np.nan, -0.0,
                        1e-40, -1e-45, 65535.0], dtype=np.float32)
    values = np.concatenate([special, np.random.default_rng(1).standard_normal(10_000).astype(np.float32)])
    got = k_bf16.rounded(values)
    np.testing.assert_array_equal(got.view(np.uint32), round_to_bf16(values).view(np.uint32))
    matrix = values[:10_000].reshape(100, 100)
    np.testing.assert_array_equal(k_bf16.rounded(matrix.T), round_to_bf16(matrix.T))
    assert not k_bf16.rounded(matrix.T).flags.c_contiguous       # a transposed view stays one


# ---------------------------------------------------------------- the twins, the emulation, the hardware

@pytest.mark.parametrize("path", HARDWARE_PATHS)
@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_the_scalar_twin_of_each_micro_kernel_matches_the_reference(path, shape):
    """What the unit computes, element by element, through the hardware kernel's driver."""
    a, b = _operands(shape)
    _assert_within_accumulation_error(bf16_units.packed_product(bf16_units.twin_kernel(path), a, b), a, b,
                                      f"{path} twin {shape}")


def test_the_twins_run_stacks_transposed_operands_and_out():
    a, b = _operands((20, 40, 24), lead=(3,))
    out = np.full((3, 20, 24), np.nan, dtype=np.float32)
    result = bf16_units.packed_product(bf16_units.twin_kernel("amx"), a, b, out=out)
    assert result is out
    _assert_within_accumulation_error(out, a, b, "amx twin, a stack of 3")
    a2, b2 = _operands((30, 50, 20))
    a_t, b_t = np.ascontiguousarray(a2.T).T, np.ascontiguousarray(b2.T).T
    _assert_within_accumulation_error(bf16_units.packed_product(bf16_units.twin_kernel("avx512_bf16"), a_t, b_t),
                                      a_t, b_t, "avx512 twin, transposed views")


# larger than one kernel call's block in every direction (ROWS_BLOCK rows, PANELS_BLOCK panels,
# KC along K), none a multiple of 16: the driver's blocks and their edges
BLOCKED_SHAPE = (bf16_units.ROWS_BLOCK + 44, bf16_units.KC * 2 + 18, bf16_units.PANELS_BLOCK * 16 + 34)


@pytest.mark.parametrize("path", HARDWARE_PATHS)
def test_the_driver_covers_products_larger_than_its_blocks(path):
    a, b = _operands(BLOCKED_SHAPE, seed=3)
    _assert_within_accumulation_error(bf16_units.packed_product(bf16_units.twin_kernel(path), a, b), a, b,
                                      f"{path} twin {BLOCKED_SHAPE}")


def test_a_product_never_hands_out_its_scratch():
    """The packed operands and a padded C live in reused buffers: a result is the caller's own,
    also where the slice of C that is the result happens to be contiguous (one element, N a
    multiple of 32)."""
    kernel = bf16_units.twin_kernel("avx512_bf16")
    results = []
    for shape in [(1, 1, 1), (5, 40, 32), (7, 3, 2)]:
        a, b = _operands(shape, seed=len(results))
        result = bf16_units.packed_product(kernel, a, b)
        results.append((result, result.copy(), a, b))
    for result, values, a, b in results:
        np.testing.assert_array_equal(result, values)
        _assert_within_accumulation_error(result, a, b, f"{a.shape} @ {b.shape} after later products")


def test_the_twin_flushes_denormals_as_the_units_do():
    """DAZ: a denormal bf16 operand counts as zero on the units (the reference keeps it)."""
    a = np.array([[1e-39, 1.0]], dtype=np.float32)          # 1e-39 is a float32 (and bf16) denormal
    b = np.array([[1e30], [0.0]], dtype=np.float32)
    for path in HARDWARE_PATHS:
        assert bf16_units.packed_product(bf16_units.twin_kernel(path), a, b)[0, 0] == 0.0
    assert reference_matmul_bf16(a, b)[0, 0] > 0.0


@pytest.mark.parametrize("shape", ODD_SHAPES + [(64, 96, 80)])
def test_the_emulated_path_matches_the_reference(shape, monkeypatch):
    monkeypatch.setattr(k_bf16, "bf16_path", lambda: bf16_detect.BF16Path("emulated", "test"))
    a, b = _operands(shape)
    _assert_within_accumulation_error(k_bf16.matmul_bf16(a, b), a, b, f"emulated {shape}")
    _assert_within_accumulation_error(k_bf16.matmul_bf16(np.ascontiguousarray(a.T).T, b), a, b,
                                      f"emulated {shape}, A transposed")


@pytest.mark.parametrize("path", HARDWARE_PATHS + ("emulated",))
def test_the_weight_caches_copy_serves_both_products_on_each_path(path, monkeypatch):
    """weight_copy: bf16 bits on the units' paths (the twins in the units' place here), the
    rounded float32 on the emulated one; the forward's x @ W.T and the backward's dout @ W take
    it as it is; a spare of the right kind is written into."""
    monkeypatch.setattr(k_bf16, "bf16_path", lambda: bf16_detect.BF16Path(path, "test"))
    monkeypatch.setattr(bf16_units, "compiled_kernel", bf16_units.twin_kernel)
    rng = np.random.default_rng(5)
    x, w, dout = (rng.standard_normal(shape).astype(np.float32) for shape in ((40, 70), (90, 70), (40, 90)))
    copy = k_bf16.weight_copy(w)
    assert copy.dtype == (np.float32 if path == "emulated" else np.uint16) and copy.shape == w.shape
    _assert_within_accumulation_error(k_bf16.matmul_bf16(x, copy.T), x, w.T, f"{path}: x @ W.T from the copy")
    _assert_within_accumulation_error(k_bf16.matmul_bf16(dout, copy), dout, w, f"{path}: dout @ W from the copy")
    spare = np.empty_like(copy)
    assert k_bf16.weight_copy(w * 2, spare) is spare
    assert k_bf16.weight_copy(w, np.empty((90, 71), copy.dtype)).shape == w.shape      # a spare that does not fit


def _skip_unless_the_cpu_has(path):
    try:
        chosen = bf16_detect.choose_path(bf16_detect.host_features(), {"amx": "amx", "avx512_bf16": "avx512"}[path])
    except UsageError as error:
        pytest.skip(f"this CPU cannot run the {path} kernel: {error}")
    return chosen


@pytest.mark.parametrize("path", HARDWARE_PATHS)
def test_each_hardware_kernel_this_cpu_has_matches_the_reference(path, monkeypatch):
    """The compiled kernel on the unit (where this CPU has it), on the odd shapes, a stack and
    through numgpt.kernels.bf16.matmul_bf16 forced onto the path; the difference from the scalar
    twin is printed (the twin follows the Intel SDM's order of the pair's two products)."""
    chosen = _skip_unless_the_cpu_has(path)
    kernel = bf16_units.compiled_kernel(path)
    for shape in ODD_SHAPES:
        a, b = _operands(shape)
        got = bf16_units.packed_product(kernel, a, b)
        _assert_within_accumulation_error(got, a, b, f"{path} hardware {shape}")
        twin = bf16_units.packed_product(bf16_units.twin_kernel(path), a, b)
        print(f"  {path} hardware vs twin {shape}: {np.abs(got - twin).max():.3g}")
    monkeypatch.setattr(k_bf16, "bf16_path", lambda: chosen)
    a, b = _operands((70, 200, 90), lead=(3,))
    _assert_within_accumulation_error(k_bf16.matmul_bf16(a, b), a, b, f"{path} through matmul_bf16, a stack")
