"""The flash twin of attention (kernels/attention.py) against the NumPy
reference (numgpt/ops/attention.py): odd shapes, grouped-query heads, Philox
dropout with the same bits on both sides, float32 within the named
tolerances below and float64 to round-off; its float64 gradient check; no
(T, T) array in memory; the same bits on any number of threads. And Philox
itself, NumPy's and numba's, against Random123's published known answers."""
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

import numba  # noqa: E402
from numba import njit  # noqa: E402

import numgpt  # noqa: E402
from numgpt import backend, ops, registry  # noqa: E402
from numgpt.autograd import Tensor  # noqa: E402
from numgpt.gradcheck import check_case, kernel_mode  # noqa: E402
from numgpt.kernels import attention as flash  # noqa: E402
from numgpt.kernels import philox as k_philox  # noqa: E402
from numgpt.ops.attention import attention_backward, attention_forward  # noqa: E402
from numgpt.ops.philox import (AttentionDropout, keep_threshold, philox4x32_10,  # noqa: E402
                               philox_uniform_bits)

# Random123's kat_vectors (the "philox4x32 10" lines): counter (4 words), key (2 words) -> output (4 words)
PHILOX4X32_10_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]

# float32 tolerances of the flash twin, relative to the largest magnitude of the reference tensor
# (an online softmax and tile-ordered sums against NumPy's full rows and BLAS products)
FLASH_FLOAT32_RTOL = {"out": 2e-6, "lse": 1e-6, "dq": 5e-6, "dk": 5e-6, "dv": 3e-6}
FLASH_FLOAT64_RTOL = 1e-12          # round-off only

# (B, T, NH, NKV, HS): T = 1, T within one tile, exactly one tile and past it (TILE = 64);
# one head; G = NH / NKV of 1, 2 and 3; HS odd or not a multiple of 4; batch 1, 2 and 3
SHAPES = [
    (1, 1, 1, 1, 6),
    (3, 70, 6, 2, 6),
    (1, 130, 4, 2, 8),
    (3, 64, 3, 3, 5),
    (2, 129, 2, 1, 16),
    (1, 200, 1, 1, 64),
    (3, 37, 3, 1, 7),
]


def assert_close(name, got, want, rtol):
    """|got - want| <= rtol * max|want| (1 where want is all 0) everywhere; prints the worst error."""
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
    worst = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0)) / scale
    print(f"{name} ({got.dtype}): worst error {worst:.2e} of max |ref| {scale:.3g} (tolerance {rtol:.0e})")
    assert worst <= rtol, f"{name}: worst relative error {worst:.3e} > {rtol:.0e}"


def inputs(B, T, NH, NKV, HS, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((B, T, NH * HS)) * 2.0).astype(dtype)
    k = (rng.standard_normal((B, T, NKV * HS)) * 2.0).astype(dtype)
    v = rng.standard_normal((B, T, NKV * HS)).astype(dtype)
    dout = rng.standard_normal((B, T, NH * HS)).astype(dtype)
    return q, k, v, dout


# ---------------------------------------------------------------- Philox
def test_numpy_philox_matches_random123_known_answers():
    for counter, key, want in PHILOX4X32_10_KAT:
        got = philox4x32_10(np.array(counter, dtype=np.uint32), key)
        assert got.dtype == np.uint32 and [int(w) for w in got] == list(want), [hex(w) for w in got]
    counters = np.array([c for c, _, _ in PHILOX4X32_10_KAT[:2]], dtype=np.uint32)   # vectorised, one key
    assert [int(w) for w in philox4x32_10(counters, (0, 0))[0]] == list(PHILOX4X32_10_KAT[0][2])


@njit
def _numba_philox(counter, key):
    words = k_philox.philox4x32_10(np.uint64(counter[0]), np.uint64(counter[1]), np.uint64(counter[2]),
                                   np.uint64(counter[3]), np.uint64(key[0]), np.uint64(key[1]))
    return np.array([words[0], words[1], words[2], words[3]], dtype=np.uint32)


def test_numba_philox_matches_random123_known_answers():
    for counter, key, want in PHILOX4X32_10_KAT:
        got = _numba_philox(np.array(counter, dtype=np.uint64), np.array(key, dtype=np.uint64))
        assert [int(w) for w in got] == list(want), [hex(w) for w in got]


@njit
def _numba_stream(k0, k1, start, count):
    """Draws start .. start + count - 1 of key (k0, k1), from numba's philox_block."""
    out = np.empty(count, dtype=np.uint32)
    for n in range(start, start + count):
        words = k_philox.philox_block(np.uint64(n // 4), np.uint64(k0), np.uint64(k1))
        out[n - start] = words[n % 4]
    return out


def test_the_stream_layout_and_the_numba_blocks():
    """Draw n is word n % 4 of the block counter (n // 4 low word, high word, 0, 0), key (low, high);
    numba's blocks give the same bits, and past 2^32 blocks they carry the high word."""
    key = 0x0123456789ABCDEF
    draws = philox_uniform_bits(key, 1003)
    blocks = philox4x32_10(np.array([[n // 4, 0, 0, 0] for n in range(0, 1003, 4)], dtype=np.uint32),
                           (0x89ABCDEF, 0x01234567))
    assert np.array_equal(draws, blocks.reshape(-1)[:1003])
    for start, count in [(0, 1003), (1, 1), (6, 997), (1001, 2)]:
        assert np.array_equal(_numba_stream(0x89ABCDEF, 0x01234567, start, count), draws[start:start + count])
    far = 3 * 2 ** 32 + 5                                                  # a block with a high counter word
    assert np.array_equal(_numba_stream(0x89ABCDEF, 0x01234567, 4 * far, 4),
                          philox4x32_10(np.array([5, 3, 0, 0], dtype=np.uint32), (0x89ABCDEF, 0x01234567)))


def test_attention_dropout_keeps_each_weight_by_its_draw():
    B, NH, T, p = 2, 3, 17, 0.3
    dropout = AttentionDropout(p, 2 ** 64 - 3)
    keep = dropout.keep(B, NH, T)
    draws = philox_uniform_bits(dropout.key, B * NH * T * T)
    threshold = keep_threshold(p)
    assert threshold == round(p * 2 ** 32)
    for b, h, i, j in [(0, 0, 0, 0), (1, 2, 16, 16), (1, 0, 5, 11), (0, 2, 3, 1)]:
        assert keep[b, h, i, j] == (draws[((b * NH + h) * T + i) * T + j] >= threshold)
    many = AttentionDropout(p, 5).keep(4, 4, 128)
    assert abs(many.mean() - (1 - p)) < 0.01                               # 262144 draws: sd 0.0009
    assert keep_threshold(0.0) == 0 and AttentionDropout(0.0, 1).keep(1, 1, 4).all()
    with pytest.raises(ValueError):
        keep_threshold(1.0)


@njit
def _run_dropout_tile(key, threshold, keep_scale, head_base, T, i0, nq, j0, nk, z, transposed):
    draws = np.empty(flash.TILE + 8, np.uint32)
    flash._dropout_tile(np.uint64(key[0]), np.uint64(key[1]), np.uint64(threshold), keep_scale, head_base, T,
                        i0, nq, j0, nk, draws, z, transposed)


@pytest.mark.parametrize("i0, nq, j0, nk", [(0, 64, 0, 64), (64, 37, 0, 64), (128, 5, 128, 5), (64, 64, 64, 3)])
def test_the_kernels_dropout_tile_is_the_references_mask(i0, nq, j0, nk):
    B, NH, T, b, h = 2, 3, 133, 1, 2
    dropout = AttentionDropout(0.4, 0xFEEDFACE12345678)
    keep = dropout.keep(B, NH, T)[b, h, i0:i0 + nq, j0:j0 + nk]
    future = np.arange(j0, j0 + nk)[None, :] > np.arange(i0, i0 + nq)[:, None]
    want = np.where(keep & ~future, np.float32(dropout.scale), np.float32(0))
    for transposed in (False, True):
        z = np.full((flash.TILE, flash.TILE), np.nan, dtype=np.float32)
        key = np.array([dropout.key & 0xFFFFFFFF, dropout.key >> 32], dtype=np.uint64)
        _run_dropout_tile(key, keep_threshold(dropout.p), np.float32(dropout.scale), (b * NH + h) * T * T, T,
                          i0, nq, j0, nk, z, transposed)
        tile = z.T if transposed else z
        assert np.array_equal(tile[:nq, :nk], want)
        assert not tile[:nq, nk:].any()                                    # zero beyond nk


# ---------------------------------------------------------------- the flash twin against the reference
def test_the_flash_pair_is_registered_for_attention():
    twins = registry.numba_twins()
    assert twins[attention_forward] is flash.attention_forward
    assert twins[attention_backward] is flash.attention_backward


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-NH{}-NKV{}-HS{}".format(*s))
def test_flash_matches_the_reference(shape, p, dtype):
    B, T, NH, NKV, HS = shape
    q, k, v, dout = inputs(*shape, dtype)
    dropout = AttentionDropout(p, 0x9E3779B97F4A7C15) if p else None
    out, cache = flash.attention_forward(q, k, v, NH, dropout, NKV)
    want_out, want_cache = attention_forward(q, k, v, NH, dropout, NKV)

    def tolerance(name):
        return FLASH_FLOAT32_RTOL[name] if dtype == np.float32 else FLASH_FLOAT64_RTOL
    assert type(cache) is flash.FlashAttentionCache and cache.lse.shape == (B, NH, T)
    assert_close("flash.out", out, want_out, tolerance("out"))
    scores = (want_cache.q.astype(np.float64) @ want_cache.k.swapaxes(-1, -2)) / math.sqrt(HS)
    scores[..., np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
    top = scores.max(axis=-1, keepdims=True)
    lse = (top + np.log(np.exp(scores - top).sum(axis=-1, keepdims=True)))[..., 0].reshape(B, NH, T)
    assert_close("flash.lse", cache.lse, lse.astype(dtype), tolerance("lse"))
    for name, got, want in zip(("dq", "dk", "dv"), flash.attention_backward(dout, cache),
                               attention_backward(dout, want_cache)):
        assert_close(f"flash.{name}", got, want, tolerance(name))


def test_dropout_changes_the_result_and_the_key_decides_it():
    q, k, v, dout = inputs(2, 70, 4, 2, 8, np.float32)
    runs = {key: flash.attention_forward(q, k, v, 4, AttentionDropout(0.2, key), 2)[0] for key in (1, 2)}
    plain = flash.attention_forward(q, k, v, 4, None, 2)[0]
    assert not np.array_equal(runs[1], plain) and not np.array_equal(runs[1], runs[2])
    assert np.array_equal(runs[1], flash.attention_forward(q, k, v, 4, AttentionDropout(0.2, 1), 2)[0])


def test_flash_is_causal():
    q, k, v, _ = inputs(1, 150, 2, 1, 8, np.float32)
    out = flash.attention_forward(q, k, v, 2, AttentionDropout(0.1, 3), 1)[0]
    future = [x.copy() for x in (q, k, v)]
    for array in future:
        array[0, 100:] += 10.0                                             # the future of position 99
    out2 = flash.attention_forward(*future, 2, AttentionDropout(0.1, 3), 1)[0]
    assert np.array_equal(out[0, :100], out2[0, :100])


@pytest.mark.parametrize("case", ["attention", "attention_dropout", "grouped_query_attention"])
def test_flash_twin_passes_the_float64_gradient_check(case):
    result = check_case(case, "numba")
    print(result.describe())
    assert result.ok


def test_causal_attention_takes_one_64_bit_draw_per_call_for_its_key():
    x = [Tensor(a) for a in inputs(1, 9, 4, 2, 4, np.float32)[:3]]
    outs = {}
    for mode in ("numpy", "numba"):
        numgpt.manual_seed(11)
        with kernel_mode(mode):
            outs[mode] = ops.causal_attention(*x, 4, 0.25, training=True, n_kv_heads=2).data
        after = backend.get_rng_state()
        numgpt.manual_seed(11)
        backend.get_generator().bit_generator.random_raw()
        assert after == backend.get_rng_state(), mode
    np.testing.assert_allclose(outs["numba"], outs["numpy"], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- memory and threads
MEMORY_PROBE = """
import json, resource, sys
import numpy as np
from numgpt.kernels import attention as flash
from numgpt.ops.philox import AttentionDropout

def peak_bytes():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

B, NH, T, HS = 1, 2, int(sys.argv[1]), 16
rng = np.random.default_rng(0)
q, k, v, dout = (rng.standard_normal((B, T, NH * HS)).astype(np.float32) for _ in range(4))
small = [x[:, :70].copy() for x in (q, k, v, dout)]
for dropout in (None, AttentionDropout(0.1, 5)):                       # compile, or load from the cache
    out, cache = flash.attention_forward(*small[:3], NH, dropout)
    flash.attention_backward(small[3], cache)
before = peak_bytes()
out, cache = flash.attention_forward(q, k, v, NH, AttentionDropout(0.1, 5))
grads = flash.attention_backward(dout, cache)
print(json.dumps({"growth": peak_bytes() - before, "finite": bool(np.isfinite(grads[0]).all())}))
"""


def test_no_T_by_T_array_at_T_4096():
    """Forward and backward at B = 1, NH = 2, T = 4096, HS = 16 (dropout on) in a fresh process:
    its peak resident memory grows by far less than one (T, T) float32 array (64 MiB)."""
    T = 4096
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(T)], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    print(f"peak memory growth {report['growth'] / 2 ** 20:.1f} MiB "
          f"(two (T, T) float32 arrays: {2 * T * T * 4 / 2 ** 20:.0f} MiB)")
    assert report["finite"]
    assert report["growth"] < T * T * 4 / 8                                # 8 MiB: inputs and outputs are 0.5 MiB each


def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


THREADS_PROBE = """
import hashlib, sys
import numpy as np
from numgpt.kernels import attention as flash
from numgpt.ops.philox import AttentionDropout
rng = np.random.default_rng(0)
q, dout = (rng.standard_normal((3, 150, 6 * 8)).astype(np.float32) for _ in range(2))
k, v = (rng.standard_normal((3, 150, 2 * 8)).astype(np.float32) for _ in range(2))
out, cache = flash.attention_forward(q, k, v, 6, AttentionDropout(0.2, 42), 2)
h = hashlib.sha256()
for a in (out, cache.lse) + flash.attention_backward(dout, cache):
    h.update(np.ascontiguousarray(a).tobytes())
print(h.hexdigest())
"""


def test_flash_gives_the_same_bits_on_any_number_of_threads():
    rng = np.random.default_rng(0)
    q, dout = (rng.standard_normal((3, 150, 6 * 8)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((3, 150, 2 * 8)).astype(np.float32) for _ in range(2))
    previous = numba.get_num_threads()
    digests = []
    try:
        for threads in sorted({1, 2, previous} & set(range(1, numba.config.NUMBA_NUM_THREADS + 1))):
            numba.set_num_threads(threads)
            out, cache = flash.attention_forward(q, k, v, 6, AttentionDropout(0.2, 42), 2)
            digests.append(digest((out, cache.lse) + flash.attention_backward(dout, cache)))
    finally:
        numba.set_num_threads(previous)
    result = subprocess.run([sys.executable, "-c", THREADS_PROBE], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, NUMBA_NUM_THREADS="5"), check=False)
    assert result.returncode == 0, result.stderr
    digests.append(result.stdout.split()[-1])
    print(digests)
    assert len(set(digests)) == 1
