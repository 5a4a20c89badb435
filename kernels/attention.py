"""numba twin of numgpt.ops.attention: flash attention (Dao et al., 2022;
the backward of FlashAttention-2, Dao 2023), causal, with grouped-query heads
and Philox dropout, on the CPU.

The reference forms the (T, T) scores, weights and their gradients of every
head. This twin never does: it walks tiles of TILE queries against tiles of
TILE keys, keeps a running (online) softmax per query, and the backward
recomputes each tile's weights from the row log-sum-exp that the forward
saved. Memory beyond the inputs and outputs is O(B NH T) plus a few
(TILE, TILE) and (HS, TILE) buffers per work item; tiles entirely in the
future (every key after every query of the tile) are never visited, which
halves the work of the full products.

Shapes: q, out, dout, dq (B, T, NH * HS); k, v, dk, dv (B, T, NKV * HS),
query head h reading key/value head kv = h // G (G = NH / NKV), read in
place: no key/value head is copied per query head. lse, D (B, NH, T). A tile
of scores is St (TILE, TILE) laid out key by query, [j, i], or S query by
key, [i, j]. c = 1 / sqrt(HS), s_drop = 1 / (1 - p), Z = keep s_drop.

Forward, per (b, h, query tile i0 .. i0 + TILE) (``_flash_forward``), the
reference's steps 2.-6. one key tile (j0 .. j0 + TILE, j0 <= the last query)
at a time, with m (the largest score so far), rowsum (the sum of
exp(score - m) so far) and Ot (the unnormalised output, transposed) per query:

    2.-3. St[j, i] = (k_j . q_i) c, -inf where j0 + j > i0 + i (the future)
    4.    m_new = max(m, max_j St[j, i]);  alpha = exp(m - m_new)
          P[j, i] = exp(St[j, i] - m_new);  rowsum = rowsum alpha + sum_j P[j, i]
    5.    Pd[j, i] = P[j, i] Z[j, i]        (Z from Philox, ``_dropout_tile``)
    6.    Ot[:, i] = Ot[:, i] alpha + sum_j v_j Pd[j, i];  m = m_new
    end   out_i = Ot[:, i] / rowsum;  lse_i = m + log(rowsum)

Why it is the softmax: after the last tile, rowsum = sum_j exp(s_j - m) over the
whole row and Ot = sum_j exp(s_j - m) Z_j v_j (each earlier term was
rescaled by exp(m_old - m_new) when m grew, so all carry the final m); their
ratio is sum_j att_j Z_j v_j, the reference's y. lse = log sum_j exp(s_j),
so att_ij = exp(s_ij - lse_i) recomputes any weight later from its score.
Laid out [j, i], the per-query statistics (max, sum, alpha) are updated a
row of St at a time across TILE queries: no sum or max across a row.

Backward (FlashAttention-2). The reference's step 4 needs rowsum(datt * att);
with datt = (dout_i . v_j) Z_ij (steps 6.-5.),
    D_i = sum_j att_ij Z_ij (dout_i . v_j) = dout_i . sum_j att_ij Z_ij v_j = dout_i . out_i
which costs O(HS) per row from what the forward returned (``_rowsum_dout_out``).
Then, per tile pair, from P = exp(S c - lse) (the weights, recomputed):

    6. dV += (P o Z)^T dO                 dP = dO V^T
    5. dP <- dP o Z
    4. dS = P o (dP - D)                  (the reference's dscores / c)
    2. dQ += dS K c                       dK += dS^T Q c

dQ gathers over key tiles, dK and dV over query tiles (and over the G query
heads of a key/value head: the fan-out sum). Each sum is made by one thread
in a fixed order, in two passes: ``_flash_backward_kv`` owns (b, kv, key
tile) and adds dK, dV over the group's heads and the query tiles, [i, j]
layout; ``_flash_backward_q`` owns (b, h, query tile) and adds dQ over key
tiles, [j, i] layout. No thread adds into another's output, so the result
has the same bits on any number of threads. The price: S and dP are
computed in both passes (7 tile products per tile pair, against
FlashAttention-2's 5 with atomic adds into dQ).

Dropout is regenerated per tile from Philox (``_dropout_tile``; the counter
layout in numgpt/ops/philox.py): the same bits as the reference's mask,
never stored beyond the tile.

Vectorisation. Every innermost loop runs over TILE lanes of a tile buffer
(a compile-time trip count: no remainder loop, no runtime trip check), the
other operand a scalar: a tile product (``_tile_product``) is rank-1
updates out[p, :] += a[p, q] tile[q, :], blocked four rows of out by four
rows of tile so that each vector load serves four fused multiply-adds. So
what becomes a tile row is copied once per work item, transposed and
zero-padded to TILE lanes (``_copy_transposed``): the query tile Qt, dOt
(HS, TILE) in the forward and the dQ pass, the key/value tile Kt, Vt in the
dK/dV pass; the other operand is read in place, as strided views of q, k, v
or dout. Lanes beyond T (the last, partial tile) compute on zeros and are
never written out. TILE = 64, four AVX-512 registers of float32: forward and
backward at B = 2, NH = 12, HS = 64 on one thread took 9% (T = 256) and 18%
(T = 1024) longer with TILE = 32, 12% and 5% longer with TILE = 128.

fastmath allows "contract" only (a * b + c may become one fused multiply-add,
rounded once); no assumption about inf or NaN is made, so a masked score is
-inf and its weight exactly 0, and a NaN reaches every output that reads it
(the reference also spreads a NaN key or value into earlier rows, through
0 * NaN in its full products; skipped future tiles do not). The sums are in
the input dtype; exp is ``vexp`` (float32) or numpy.exp (float64).

Under ``numgpt.autocast`` (``bf16``, decided at the forward and kept in the
cache) every tile product takes bf16 operands, as a bf16 matrix unit would
be fed: q, k, v are rounded once at entry (round-to-nearest-even, numgpt.bf16)
and dout at the backward's entry (D = rowsum(dout o out) reads the same
rounded dout as dP = dout V^T, so that dS = P (dP - D) keeps its zero row
sum: with one key, dS is 0 up to float32 round-off); the tiles P Z
(forward: unnormalised, before the product with V; backward: normalised)
and dS are rounded in place where they enter a product (``_round_to_bf16``). The running max, the row sums,
lse and D stay float32, as the reference's softmax statistics.
"""
import math
from typing import NamedTuple, Optional

import numpy
from numba import njit, prange

from numgpt.kernels.bf16 import rounded
from numgpt.kernels.philox import philox_block
from numgpt.kernels.vexp import vexp
from numgpt.ops.philox import AttentionDropout, key_words, keep_threshold
from numgpt.precision import autocast_active

TILE = 64                # queries and keys per tile: every innermost loop runs over TILE lanes
FASTMATH = {"contract"}


class FlashAttentionCache(NamedTuple):
    q: numpy.ndarray                     # (B, T, NH * HS) the inputs, C-contiguous
    k: numpy.ndarray                     # (B, T, NKV * HS)
    v: numpy.ndarray                     # (B, T, NKV * HS)
    out: numpy.ndarray                   # (B, T, NH * HS) the returned output itself (D = rowsum(dout * out))
    lse: numpy.ndarray                   # (B, NH, T) log sum_j exp(score_ij) per query row
    n_heads: int
    n_kv_heads: int
    dropout: Optional[AttentionDropout]  # (p, key), or None
    bf16: bool = False                   # bf16 tile products (q, k, v above already rounded)


@njit
def _exp(x):
    """vexp(x), a function of its own: numba inlines vexp into each call site, and two sites
    in one kernel trip its internal IR check (NumbaIRAssumptionWarning); LLVM inlines this."""
    return vexp(x)


@njit(inline="always")
def _tile_product(a, tile, out, accumulate):
    """out[p, :] (+)= sum over q of a[p, q] tile[q, :], for p < P, q < Q, (P, Q) = a.shape;
    out and tile TILE wide. ``a`` is read in place through its strides (rows of q, k, v or dout,
    or their transpose), one scalar at a time; tile and out a row (TILE lanes) at a time.

    Register blocking: four rows of out against four rows of tile per pass, so that each load
    of a tile row serves four rows of out and each load and store of out four terms. The
    terms are added to out[p] one at a time, q in order (the order of a plain loop)."""
    P, Q = a.shape
    zero = out.dtype.type(0)
    if not accumulate:
        for p in range(P):
            for x in range(TILE):
                out[p, x] = zero
    p = 0
    while p + 4 <= P:
        o0, o1, o2, o3 = out[p], out[p + 1], out[p + 2], out[p + 3]
        q = 0
        while q + 4 <= Q:
            t0, t1, t2, t3 = tile[q], tile[q + 1], tile[q + 2], tile[q + 3]
            a00, a01, a02, a03 = a[p, q], a[p, q + 1], a[p, q + 2], a[p, q + 3]
            a10, a11, a12, a13 = a[p + 1, q], a[p + 1, q + 1], a[p + 1, q + 2], a[p + 1, q + 3]
            a20, a21, a22, a23 = a[p + 2, q], a[p + 2, q + 1], a[p + 2, q + 2], a[p + 2, q + 3]
            a30, a31, a32, a33 = a[p + 3, q], a[p + 3, q + 1], a[p + 3, q + 2], a[p + 3, q + 3]
            for x in range(TILE):
                u0, u1, u2, u3 = t0[x], t1[x], t2[x], t3[x]
                o0[x] = o0[x] + a00 * u0 + a01 * u1 + a02 * u2 + a03 * u3
                o1[x] = o1[x] + a10 * u0 + a11 * u1 + a12 * u2 + a13 * u3
                o2[x] = o2[x] + a20 * u0 + a21 * u1 + a22 * u2 + a23 * u3
                o3[x] = o3[x] + a30 * u0 + a31 * u1 + a32 * u2 + a33 * u3
            q += 4
        while q < Q:                                                     # Q's last Q % 4
            t0, a00, a10, a20, a30 = tile[q], a[p, q], a[p + 1, q], a[p + 2, q], a[p + 3, q]
            for x in range(TILE):
                o0[x] = o0[x] + a00 * t0[x]
                o1[x] = o1[x] + a10 * t0[x]
                o2[x] = o2[x] + a20 * t0[x]
                o3[x] = o3[x] + a30 * t0[x]
            q += 1
        p += 4
    while p < P:                                                         # P's last P % 4
        o0 = out[p]
        for q in range(Q):
            a00, t0 = a[p, q], tile[q]
            for x in range(TILE):
                o0[x] = o0[x] + a00 * t0[x]
        p += 1


@njit(inline="always")
def _round_to_bf16(tile, rows):
    """tile[:rows] rounded to bf16 in place (float32 tile, C-contiguous): the bits of
    numgpt.bf16.round_to_bf16, round-to-nearest-even on the dropped low 16 bits, NaN kept."""
    bits = tile[:rows].view(numpy.uint32)
    for r in range(rows):
        for x in range(bits.shape[1]):
            u = bits[r, x]
            if tile[r, x] == tile[r, x]:                                 # not NaN
                u = u + numpy.uint32(0x7FFF) + ((u >> numpy.uint32(16)) & numpy.uint32(1))
            bits[r, x] = u & numpy.uint32(0xFFFF0000)


@njit(inline="always")
def _copy_transposed(a, out):
    """out[:, :P] = a.T for a (P, Q), zero beyond: a tile of heads (P positions, Q = HS channels),
    transposed to (HS, TILE)."""
    P, Q = a.shape
    zero = out.dtype.type(0)
    for d in range(Q):
        for x in range(P, TILE):
            out[d, x] = zero
    for r in range(P):
        for d in range(Q):
            out[d, r] = a[r, d]


@njit(inline="always")
def _dropout_tile(k0, k1, threshold, keep_scale, head_base, T, i0, nq, j0, nk, draws, z, transposed):
    """Z of one tile: keep_scale where Philox draw head_base + (i0 + i) T + j0 + j is >= threshold,
    else 0, at z[j, i] (transposed) or z[i, j]; 0 in the future (j0 + j > i0 + i) and beyond nk.
    ``draws`` (TILE + 8,) uint32 is scratch: one row's draws, from its first Philox block."""
    zero = z.dtype.type(0)
    for i in range(nq):
        width = max(0, min(nk, i0 + i - j0 + 1))                       # the row's past and present
        n0 = head_base + (i0 + i) * T + j0                             # draw index of (i, j = 0)
        offset = n0 % 4                                                # its place in its Philox block
        first = n0 // 4
        for block in range((offset + width + 3) // 4):                 # 4 draws per block
            words = philox_block(numpy.uint64(first + block), k0, k1)
            for w in range(4):
                draws[4 * block + w] = words[w]
        for j in range(TILE):
            value = keep_scale if j < width and draws[offset + j] >= threshold else zero
            if transposed:
                z[j, i] = value
            else:
                z[i, j] = value


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _flash_forward(q, k, v, NH, NKV, scale, has_dropout, k0, k1, threshold, keep_scale, bf16, out, lse):
    B, T, C = q.shape
    HS, G = C // NH, NH // NKV
    n_tiles = (T + TILE - 1) // TILE
    dtype = q.dtype
    for item in prange(B * NH * n_tiles):
        b, h, tile = item // (NH * n_tiles), (item // n_tiles) % NH, item % n_tiles
        qc, kc = h * HS, (h // G) * HS                                   # the head's columns in q and in k, v
        i0 = tile * TILE
        nq = min(TILE, T - i0)
        Qt = numpy.empty((HS, TILE), dtype)
        Ot = numpy.zeros((HS, TILE), dtype)
        St = numpy.empty((TILE, TILE), dtype)
        Z = numpy.empty((TILE, TILE), dtype)
        draws = numpy.empty(TILE + 8, numpy.uint32)
        m = numpy.full(TILE, -numpy.inf, dtype)
        m_new = numpy.empty(TILE, dtype)
        alpha = numpy.empty(TILE, dtype)
        rowsum = numpy.zeros(TILE, dtype)
        _copy_transposed(q[b, i0:i0 + nq, qc:qc + HS], Qt)              # 1. Qt (HS, TILE)
        head_base = (b * NH + h) * T * T
        for j0 in range(0, i0 + nq, TILE):                               # key tiles up to the last query
            nk = min(TILE, i0 + nq - j0)
            k_tile, v_tile = k[b, j0:j0 + nk, kc:kc + HS], v[b, j0:j0 + nk, kc:kc + HS]   # (nk, HS) views
            _tile_product(k_tile, Qt, St, False)                         # 2. St[j, i] = k_j . q_i
            for x in range(TILE):
                m_new[x] = m[x]
            for j in range(nk):                                          # 2.-3. scale, -inf in the future; 4. max
                for x in range(TILE):
                    s = St[j, x] * scale if j0 + j <= i0 + x else -numpy.inf
                    St[j, x] = s
                    m_new[x] = s if s > m_new[x] else m_new[x]
            for x in range(TILE):                                        # 4. online softmax: rescale the past
                alpha[x] = _exp(m[x] - m_new[x])
                rowsum[x] *= alpha[x]
                m[x] = m_new[x]
            for d in range(HS):
                for x in range(TILE):
                    Ot[d, x] *= alpha[x]
            for j in range(nk):                                          # 4. P = exp(St - m), its sum
                for x in range(TILE):
                    e = _exp(St[j, x] - m_new[x])
                    St[j, x] = e
                    rowsum[x] += e
            if has_dropout:                                              # 5. Pd = P Z
                _dropout_tile(k0, k1, threshold, keep_scale, head_base, T, i0, nq, j0, nk, draws, Z, True)
                for j in range(nk):
                    for x in range(TILE):
                        St[j, x] *= Z[j, x]
            if bf16:
                _round_to_bf16(St, nk)                                   # Pd enters the product in bf16
            _tile_product(v_tile.T, St, Ot, True)                        # 6. Ot[d, i] += v_j[d] Pd[j, i]
        for i in range(nq):
            lse[b, h, i0 + i] = m[i] + math.log(rowsum[i])
            for d in range(HS):
                out[b, i0 + i, qc + d] = Ot[d, i] / rowsum[i]


@njit(parallel=True, cache=True)
def _rowsum_dout_out(dout, out, NH, D):
    """D[b, h, i] = dout_i . out_i over head h's HS channels."""
    B, T, C = out.shape
    HS = C // NH
    for row in prange(B * T):
        b, i = row // T, row % T
        for h in range(NH):
            total = out.dtype.type(0)
            for d in range(h * HS, (h + 1) * HS):
                total += dout[b, i, d] * out[b, i, d]
            D[b, h, i] = total


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _flash_backward_kv(q, k, v, dout, lse, D, NH, NKV, scale, has_dropout, k0, k1, threshold, keep_scale,
                       bf16, dk, dv):
    """dK, dV of (b, kv, key tile) per item: sums over the G query heads of kv and the query tiles."""
    B, T, C = q.shape
    HS, G = C // NH, NH // NKV
    n_tiles = (T + TILE - 1) // TILE
    dtype = q.dtype
    zero = dtype.type(0)
    for item in prange(B * NKV * n_tiles):
        b, kv, tile = item // (NKV * n_tiles), (item // n_tiles) % NKV, item % n_tiles
        kc = kv * HS
        j0 = tile * TILE
        nk = min(TILE, T - j0)
        Kt = numpy.empty((HS, TILE), dtype)
        Vt = numpy.empty((HS, TILE), dtype)
        dKt = numpy.zeros((HS, TILE), dtype)
        dVt = numpy.zeros((HS, TILE), dtype)
        S = numpy.empty((TILE, TILE), dtype)
        dP = numpy.empty((TILE, TILE), dtype)
        Z = numpy.empty((TILE, TILE), dtype)
        PZ = numpy.empty((TILE, TILE), dtype) if has_dropout or bf16 else S   # S itself stays float32
        draws = numpy.empty(TILE + 8, numpy.uint32)
        _copy_transposed(k[b, j0:j0 + nk, kc:kc + HS], Kt)               # Kt, Vt (HS, TILE)
        _copy_transposed(v[b, j0:j0 + nk, kc:kc + HS], Vt)
        for g in range(G):
            h = kv * G + g
            qc = h * HS
            head_base = (b * NH + h) * T * T
            for i0 in range(j0, T, TILE):                                # query tiles from the diagonal on
                nq = min(TILE, T - i0)
                q_tile, do_tile = q[b, i0:i0 + nq, qc:qc + HS], dout[b, i0:i0 + nq, qc:qc + HS]   # (nq, HS)
                _tile_product(q_tile, Kt, S, False)                      # 2. S[i, j] = q_i . k_j
                for i in range(nq):                                      # 4. P = exp(S c - lse), 0 in the future
                    L = lse[b, h, i0 + i]
                    for x in range(TILE):
                        e = vexp(S[i, x] * scale - L)
                        S[i, x] = e if j0 + x <= i0 + i else zero
                _tile_product(do_tile, Vt, dP, False)                    # 6. dP[i, j] = dout_i . v_j
                if has_dropout:                                          # 5. P Z, dP Z
                    _dropout_tile(k0, k1, threshold, keep_scale, head_base, T, i0, nq, j0, nk, draws, Z, False)
                    for i in range(nq):
                        for x in range(TILE):
                            PZ[i, x] = S[i, x] * Z[i, x]
                            dP[i, x] *= Z[i, x]
                if bf16:                                                 # P Z enters the product in bf16
                    if not has_dropout:
                        PZ[:nq] = S[:nq]
                    _round_to_bf16(PZ, nq)
                _tile_product(do_tile.T, PZ[:nq], dVt, True)             # 6. dVt[d, j] += dout_i[d] (P Z)[i, j]
                for i in range(nq):                                      # 4. dS = P (dP - D), in dP
                    Di = D[b, h, i0 + i]
                    for x in range(TILE):
                        dP[i, x] = S[i, x] * (dP[i, x] - Di)
                if bf16:
                    _round_to_bf16(dP, nq)                               # dS enters the product in bf16
                _tile_product(q_tile.T, dP[:nq], dKt, True)              # 2. dKt[d, j] += q_i[d] dS[i, j]
        for j in range(nk):
            for d in range(HS):
                dk[b, j0 + j, kc + d] = dKt[d, j] * scale
                dv[b, j0 + j, kc + d] = dVt[d, j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _flash_backward_q(q, k, v, dout, lse, D, NH, NKV, scale, has_dropout, k0, k1, threshold, keep_scale, bf16,
                      dq):
    """dQ of (b, h, query tile) per item: sums over the key tiles up to the diagonal."""
    B, T, C = q.shape
    HS, G = C // NH, NH // NKV
    n_tiles = (T + TILE - 1) // TILE
    dtype = q.dtype
    zero = dtype.type(0)
    for item in prange(B * NH * n_tiles):
        b, h, tile = item // (NH * n_tiles), (item // n_tiles) % NH, item % n_tiles
        qc, kc = h * HS, (h // G) * HS
        i0 = tile * TILE
        nq = min(TILE, T - i0)
        Qt = numpy.empty((HS, TILE), dtype)
        dOt = numpy.empty((HS, TILE), dtype)
        dQt = numpy.zeros((HS, TILE), dtype)
        St = numpy.empty((TILE, TILE), dtype)
        dPt = numpy.empty((TILE, TILE), dtype)
        Z = numpy.empty((TILE, TILE), dtype)
        draws = numpy.empty(TILE + 8, numpy.uint32)
        L = numpy.zeros(TILE, dtype)
        Di = numpy.zeros(TILE, dtype)
        for i in range(nq):
            L[i], Di[i] = lse[b, h, i0 + i], D[b, h, i0 + i]
        _copy_transposed(q[b, i0:i0 + nq, qc:qc + HS], Qt)              # Qt, dOt (HS, TILE)
        _copy_transposed(dout[b, i0:i0 + nq, qc:qc + HS], dOt)
        head_base = (b * NH + h) * T * T
        for j0 in range(0, i0 + nq, TILE):
            nk = min(TILE, i0 + nq - j0)
            k_tile, v_tile = k[b, j0:j0 + nk, kc:kc + HS], v[b, j0:j0 + nk, kc:kc + HS]   # (nk, HS)
            _tile_product(k_tile, Qt, St, False)                         # 2. St[j, i] = k_j . q_i
            for j in range(nk):                                          # 4. P = exp(St c - lse), 0 in the future
                for x in range(TILE):
                    e = vexp(St[j, x] * scale - L[x])
                    St[j, x] = e if j0 + j <= i0 + x else zero
            _tile_product(v_tile, dOt, dPt, False)                       # 6. dPt[j, i] = v_j . dout_i
            if has_dropout:                                              # 5. dP Z
                _dropout_tile(k0, k1, threshold, keep_scale, head_base, T, i0, nq, j0, nk, draws, Z, True)
                for j in range(nk):
                    for x in range(TILE):
                        dPt[j, x] *= Z[j, x]
            for j in range(nk):                                          # 4. dS = P (dP - D), in dPt
                for x in range(TILE):
                    dPt[j, x] = St[j, x] * (dPt[j, x] - Di[x])
            if bf16:
                _round_to_bf16(dPt, nk)                                  # dS enters the product in bf16
            _tile_product(k_tile.T, dPt[:nk], dQt, True)                 # 2. dQt[d, i] += k_j[d] dS[j, i]
        for i in range(nq):
            for d in range(HS):
                dq[b, i0 + i, qc + d] = dQt[d, i] * scale


def _dropout_args(dropout, dtype):
    """(has_dropout, k0, k1, threshold, keep_scale) for the kernels (no dropout: unused zeros)."""
    if dropout is None:
        return False, numpy.uint64(0), numpy.uint64(0), numpy.uint64(0), dtype.type(1)
    k0, k1 = key_words(dropout.key)
    return (True, numpy.uint64(k0), numpy.uint64(k1), numpy.uint64(keep_threshold(dropout.p)),
            dtype.type(dropout.scale))


def attention_forward(q, k, v, n_heads, dropout=None, n_kv_heads=None):
    bf16 = autocast_active(q)
    NKV = n_kv_heads or n_heads
    q, k, v = (numpy.ascontiguousarray(x) for x in (q, k, v))        # in place when they are (the usual case)
    if bf16:
        q, k, v = (rounded(x) for x in (q, k, v))                    # the products' operands, rounded once
    B, T, C = q.shape
    scale = q.dtype.type(1.0 / math.sqrt(C // n_heads))
    out = numpy.empty_like(q)                                         # (B, T, NH * HS)
    lse = numpy.empty((B, n_heads, T), dtype=q.dtype)
    _flash_forward(q, k, v, n_heads, NKV, scale, *_dropout_args(dropout, q.dtype), bf16, out, lse)
    return out, FlashAttentionCache(q, k, v, out, lse, n_heads, NKV, dropout, bf16)


def attention_backward(dout, cache):
    q, k, v, out, lse, NH, NKV, dropout, bf16 = cache
    dout = numpy.ascontiguousarray(dout, dtype=q.dtype)
    if bf16:
        dout = rounded(dout)                                          # the products' operand, rounded once
    B, T, C = q.shape
    scale = q.dtype.type(1.0 / math.sqrt(C // NH))
    D = numpy.empty((B, NH, T), dtype=q.dtype)
    _rowsum_dout_out(dout, out, NH, D)                                # D_i = dout_i . out_i
    args = (q, k, v, dout, lse, D, NH, NKV, scale) + _dropout_args(dropout, q.dtype) + (bf16,)
    dq, dk, dv = numpy.empty_like(q), numpy.empty_like(k), numpy.empty_like(v)
    _flash_backward_kv(*args, dk, dv)
    _flash_backward_q(*args, dq)
    return dq, dk, dv


JITTED = (_flash_forward, _rowsum_dout_out, _flash_backward_kv, _flash_backward_q)
