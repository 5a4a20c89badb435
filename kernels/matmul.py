"""numba twin of numgpt.ops.linear.matmul: float32 matrix products on
AVX-512, for the linear layers' forward and backward products and (through
kernels/attention.py) attention's per-head products.

Why not NumPy's BLAS everywhere: a BLAS may run narrower kernels than the
CPU has, and OpenBLAS's idle threads spin for a while after each call, which
slows the numba kernels that run next. On this project's machine (AMD EPYC,
AVX-512) the environment pins OpenBLAS to its AVX2 ("Haswell") kernels,
~250 GFLOP/s on two cores; this kernel reaches 360-460 on the step's linear
products (benchmarks/results.md has the table). On Intel Emerald Rapids it
is the other way round (OpenBLAS 387-425 GFLOP/s, this kernel 207-340), so
which of the two runs is measured per machine and shape class (below).
Without AVX-512 (``HAS_AVX512`` false) every product goes to NumPy.

The method is Goto's [1], in BLIS's five-loop form [2]: five loops around a
register micro-kernel, each loop sized so that the block of an operand it
reuses stays in one level of the memory hierarchy, and B packed so that the
innermost loop reads it in order. The micro-kernel is written in LLVM IR
(numba's ``@intrinsic``), because a tile kept in a numba array lives in
memory, not in registers.

The loop nest (``_product_block``, one thread's block of C; 4-byte floats).
Each block stays in the level named while the loop below it reuses it:

  for jc in N, step NC = 768      loop 5  columns of C and B
   for pc in K, step KC = 256     loop 4  pack B[pc:+KC, jc:+NC] -> packed_b   KC x NC = 768 KiB  L3
    for ic in M, step MC = 256    loop 3  A[ic:+MC, pc:+KC] (copied if A.T)    MC x KC = 256 KiB  L2
     for jr in NC, step NR = 48   loop 2  micro-panel of packed_b              KC x NR =  48 KiB  L1 (*)
      for ir in MC, step MR = 8   loop 1  sliver A[ir:+MR, pc:+KC]             MR x KC =   8 KiB  from L2
       for p in KC                _tile_product: C[ir:+MR, jr:+NR] +=          MR x NR = 1.5 KiB  24 zmm
                                    A[ir:+MR, p] (8 broadcasts) * packed_b[p, jr:+NR] (3 vectors)

Reuse: packed_b serves every ic block (M / MC of them), the A block all
NC / NR = 16 micro-panels, a micro-panel all MC / MR = 32 slivers (each
sliver is used once per micro-panel, streamed from L2 past it), each B
vector MR = 8 FMAs and each broadcast NV = 3. C's tile is read and written
once per K block. Above loop 5, ``_gemm`` gives each thread whole products
or a block of C's rows or columns.

Why the sizes fit, on this project's machine (``lscpu``,
/sys/devices/system/cpu/cpu0/cache): AMD EPYC family 25 model 17 (Zen 4)
as a 2-vCPU KVM guest, L1d 32 KiB 8-way and L2 1 MiB 8-way per core, L3
32 MiB 16-way shared.
- Registers: the 8 x 48 tile is 24 zmm registers of 64 bytes (below).
- L1 (*): in BLIS's plan the micro-panel sits in L1 while loop 1 streams
  the slivers past it; BLIS sizes KC so that it takes about half of L1.
  Here the micro-panel, 256 x 48 x 4 = 48 KiB, is larger than the 32 KiB
  L1: that would take KC ~ 80, and C's tile would be read and written
  about 3x as often (10 K blocks instead of 3 for K = 768). At KC = 256
  loop 1 re-reads the micro-panel from L2, in order (the prefetcher
  follows it): 3 x 64 bytes per step p, i.e. per 24 FMAs, at most 16
  bytes per cycle even at two 512-bit FMAs per cycle (Zen 4 issues one),
  a fraction of what L2 delivers to L1.
- L2: the A block, 256 x 256 x 4 = 256 KiB, plus the 48 KiB micro-panel
  and the C tiles take about a third of the 1 MiB.
- L3: packed_b, 256 x 768 x 4 = 768 KiB per thread (1.5 MiB for both), is
  too big for L2 beside the A block and small beside the shared 32 MiB.
  NC = 768 = 16 x NR is also GPT-2 small's C.

The register budget of the micro-kernel (AVX-512: 32 zmm registers of
16 floats): 24 accumulators (MR x NV = 8 x 3 vectors) + 3 vectors of
packed B (one row p, 48 floats) + 1 broadcast of A[i, p] = 28 of 32. (The
compiled loop, read with numba's ``inspect_asm`` on this machine, does two
steps per iteration and loads the second step's operands into the spare
registers: 31 zmm, no stack access inside the loop.) Why 24 accumulators:
each is a chain of dependent FMAs, one per p, and the FMA pipes stay busy
only with at least latency x issue rate chains in flight (4 cycles x 2 per
cycle = 8 on Intel cores with two 512-bit FMA units; 4 x 1 on Zen 4). And
the more accumulators, the fewer loads per FMA: each step issues MR
broadcasts and NV vector loads for MR x NV FMAs. The shapes with 24
accumulators (not timed against each other here; this one's speed is in
benchmarks/results.md):
    MR x NR    zmm registers   loads per 24 FMAs   micro-panel KC x NR
    12 x 32    24 + 2 + 1 = 27   12 + 2 = 14          32 KiB
     8 x 48    24 + 3 + 1 = 28    8 + 3 = 11          48 KiB
     6 x 64    24 + 4 + 1 = 29    6 + 4 = 10          64 KiB
12 x 32 needs 27% more loads per FMA. 6 x 64 saves one load in 11 but
makes the micro-panel twice L1 and leaves 3 spare registers; and 6
divides neither MC = 256 nor the sequence length T = 256, so every block
of rows would end in a zero-padded tile, where 8 divides both (and
B x T). The price of NR = 48: N = 64 (attention's att @ v per head with
HS = 64) is one full panel and one 16-wide edge tile.

The pieces:
- ``_tile_product``: an MR x NR = 8 x 48 tile of C in 24 AVX-512 registers;
  per step p of the sum, 3 vector loads of packed B, 8 broadcasts of A and
  24 fused multiply-adds. A is read in place through two strides, so a row-
  or column-major operand needs no packing; B is read from packed panels.
  ``_tile_product_scalar`` is its portable twin (any CPU, same arithmetic:
  tests/test_kernels.py checks the two bit for bit on AVX-512).
- B is packed KC rows by NC columns at a time into panels NR wide
  (``_pack_b``: 16-float vector copies, or 16-float gathers when B is a
  transposed view such as a weight's ``W.T``), zero-padded at the right edge.
- A stored transposed (the weight gradient's ``dout.T``) is copied MC columns
  by KC rows at a time (``_pack_a_columns``), so that the micro-kernel's
  rows are close together in memory.
- Edge tiles (M not a multiple of MR, N not a multiple of NR) go through a
  zero-padded tile buffer.
- Both cores, one parallel region per call: a stack of at least as many
  products as threads (attention's B x NH heads) gives each thread whole
  products; a single product is cut into one block of C's rows or columns
  (whichever is longer) per thread, each blocked as above.

Every element of C is one dot product summed in the same order (K blocks of
KC in order, p in order within a block, one fused multiply-add per step),
whatever the number of threads: the same bits on every run. The only
reassociation against a naive loop is that order; inf and NaN propagate as
in any IEEE product (the zero padding only touches discarded tile entries).

Shapes: a (..., M, K), b (..., K, N), out (..., M, N), the leading axes
equal; a and b may be C-contiguous arrays or transposed views of them. Anything else (other dtypes, other strides, a
dimension under MIN_DIM: tiny test models, generation's one-token steps)
goes to ``numpy.matmul``. Of the products the kernel can take, ``matmul``
runs each on the kernel or on the BLAS as the machine's measured choice for
its shape class says (kernels/matmul_choice.py: on some CPUs the BLAS is the
faster); ``kernel_matmul`` always runs the kernel, for tests and benchmarks.

[1] K. Goto and R. A. van de Geijn, "Anatomy of High-Performance Matrix
    Multiplication", ACM Transactions on Mathematical Software 34(3), 2008.
[2] F. G. Van Zee and R. A. van de Geijn, "BLIS: A Framework for Rapidly
    Instantiating BLAS Functionality", ACM Transactions on Mathematical
    Software 41(3), 2015.
"""
import math

import llvmlite.binding
import numba
import numpy
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from numgpt.kernels.matmul_choice import BLAS, MatmulChooser, cache_path, machine_fingerprint, time_both

LANES = 16                # float32 lanes of an AVX-512 register
MR, NV = 8, 3             # the micro-tile: MR rows x NV registers (NR = 48 columns)
NR = NV * LANES
KC, MC, NC = 256, 256, 768   # blocks of K, M (transposed A) and N (B) packed at a time
MIN_DIM = 16
_chooser = None           # chooser(): made on the first product the kernel could take

# numba compiles for the host CPU unless NUMBA_CPU_NAME says otherwise (then 16-lane vectors would be split)
HAS_AVX512 = (bool(llvmlite.binding.get_host_cpu_features().get("avx512f", False))
              and numba.config.CPU_NAME in (None, "host"))

_F32 = ir.FloatType()
_I32, _I64 = ir.IntType(32), ir.IntType(64)
_VEC = ir.VectorType(_F32, LANES)


def _float32_arrays(*array_types):
    return all(isinstance(t, types.Array) and t.dtype == types.float32 for t in array_types)


def _element_pointer(context, builder, array_type, array, offset):
    return builder.gep(context.make_array(array_type)(context, builder, array).data, [offset])


@intrinsic
def _copy16(typingctx, dst, dst_offset, src, src_offset):
    """dst[dst_offset : dst_offset + 16] = src[src_offset : src_offset + 16] (one vector load and store)."""
    if not _float32_arrays(dst, src):
        return None

    def codegen(context, builder, signature, args):
        dst_, dst_offset_, src_, src_offset_ = args
        source = _element_pointer(context, builder, signature.args[2], src_, src_offset_)
        target = _element_pointer(context, builder, signature.args[0], dst_, dst_offset_)
        vector = builder.load(builder.bitcast(source, _VEC.as_pointer()), align=4)
        builder.store(vector, builder.bitcast(target, _VEC.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(dst, dst_offset, src, src_offset), codegen


@intrinsic
def _gather16(typingctx, dst, dst_offset, src, src_offset, stride):
    """dst[dst_offset + k] = src[src_offset + k * stride] for k < 16 (a column of a row-major matrix)."""
    if not _float32_arrays(dst, src):
        return None

    def codegen(context, builder, signature, args):
        dst_, dst_offset_, src_, src_offset_, stride_ = args
        source = _element_pointer(context, builder, signature.args[2], src_, src_offset_)
        target = _element_pointer(context, builder, signature.args[0], dst_, dst_offset_)
        vector = ir.Constant(_VEC, ir.Undefined)
        for k in range(LANES):
            value = builder.load(builder.gep(source, [builder.mul(stride_, ir.Constant(_I64, k))]), align=4)
            vector = builder.insert_element(vector, value, ir.Constant(_I32, k))
        builder.store(vector, builder.bitcast(target, _VEC.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(dst, dst_offset, src, src_offset, stride), codegen


@intrinsic
def _tile_product(typingctx, a, a_offset, a_row_stride, a_col_stride, packed_b, b_offset, kc, c, c_offset, ldc,
                  accumulate):
    """The micro-kernel, for i < MR, j < NR:
    c[c_offset + i ldc + j] (+)= sum over p < kc of
        a[a_offset + i a_row_stride + p a_col_stride] * packed_b[b_offset + p NR + j].
    The MR x NV accumulators are SSA values (phi nodes), so LLVM keeps them in registers."""
    if not _float32_arrays(a, packed_b, c):
        return None

    def codegen(context, builder, signature, args):
        a_, a_offset_, a_rs_, a_cs_, b_, b_offset_, kc_, c_, c_offset_, ldc_, accumulate_ = args
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v16f32")
        a_base = _element_pointer(context, builder, signature.args[0], a_, a_offset_)
        b_base = _element_pointer(context, builder, signature.args[4], b_, b_offset_)
        c_base = _element_pointer(context, builder, signature.args[7], c_, c_offset_)
        a_rows = [builder.gep(a_base, [builder.mul(a_rs_, ir.Constant(_I64, i))]) for i in range(MR)]
        zero = ir.Constant(_VEC, [0.0] * LANES)
        undef = ir.Constant(_VEC, ir.Undefined)
        broadcast_mask = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)

        entry = builder.block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.cbranch(builder.icmp_signed(">", kc_, ir.Constant(_I64, 0)), loop, done)

        builder.position_at_end(loop)                       # one rank-1 update per p
        p = builder.phi(_I64)
        p.add_incoming(ir.Constant(_I64, 0), entry)
        acc = [[builder.phi(_VEC) for _ in range(NV)] for _ in range(MR)]
        for row in acc:
            for value in row:
                value.add_incoming(zero, entry)
        b_row = builder.mul(p, ir.Constant(_I64, NR))
        b_addresses = [builder.gep(b_base, [builder.add(b_row, ir.Constant(_I64, v * LANES))]) for v in range(NV)]
        b_vectors = [builder.load(builder.bitcast(address, _VEC.as_pointer()), align=4) for address in b_addresses]
        a_column = builder.mul(p, a_cs_)
        updated = []
        for i in range(MR):
            a_value = builder.load(builder.gep(a_rows[i], [a_column]), align=4)
            a_vector = builder.shuffle_vector(builder.insert_element(undef, a_value, ir.Constant(_I32, 0)),
                                              undef, broadcast_mask)
            updated.append([builder.call(fma, [a_vector, b_vectors[v], acc[i][v]]) for v in range(NV)])
        p_next = builder.add(p, ir.Constant(_I64, 1))
        loop_end = builder.block
        p.add_incoming(p_next, loop_end)
        for i in range(MR):
            for v in range(NV):
                acc[i][v].add_incoming(updated[i][v], loop_end)
        builder.cbranch(builder.icmp_signed("<", p_next, kc_), loop, done)

        builder.position_at_end(done)                       # write the tile
        result = [[None] * NV for _ in range(MR)]
        for i in range(MR):
            for v in range(NV):
                result[i][v] = builder.phi(_VEC)
                result[i][v].add_incoming(zero, entry)
                result[i][v].add_incoming(updated[i][v], loop_end)
        c_ptr = [[builder.bitcast(builder.gep(c_base, [builder.add(builder.mul(ldc_, ir.Constant(_I64, i)),
                                                                   ir.Constant(_I64, v * LANES))]), _VEC.as_pointer())
                  for v in range(NV)] for i in range(MR)]
        with builder.if_else(cgutils.as_bool_bit(builder, accumulate_)) as (add_to_c, store_to_c):
            with add_to_c:
                for i in range(MR):
                    for v in range(NV):
                        old = builder.load(c_ptr[i][v], align=4)
                        builder.store(builder.fadd(old, result[i][v]), c_ptr[i][v], align=4)
            with store_to_c:
                for i in range(MR):
                    for v in range(NV):
                        builder.store(result[i][v], c_ptr[i][v], align=4)
        return context.get_dummy_value()

    signature = types.void(a, a_offset, a_row_stride, a_col_stride, packed_b, b_offset, kc, c, c_offset, ldc,
                           accumulate)
    return signature, codegen


@njit(cache=True)
def _fma32(x, y, z):
    """x * y + z for float32 x, y, z, rounded once to float32 (one lane of llvm.fma.v16f32), on
    any CPU, in float64 arithmetic:
    1. x y is exact in float64 (24 + 24 significant bits fit in 53);
    2. s = x y + z rounded to float64, and that rounding's error exactly (Knuth's two-sum);
    3. if the error is not 0, s moves to its neighbour towards the exact sum when its last bit is
       even ("round to odd"), so that rounding s to float32 (53 >= 24 + 2 bits) cannot meet a
       false tie: the float32 is the exact sum rounded once (Boldo and Melquiond, "Emulation of
       FMA and correctly rounded sums: proved algorithms using rounding to odd", IEEE
       Transactions on Computers 57(4), 2008).
    Without step 3 some sums round twice: x = 1 + 2^-23, y = 2^-24 - 2^-47, z = 1 + 2^-23 would
    give 1 + 2^-22, not 1 + 2^-23."""
    product = numpy.float64(x) * numpy.float64(y)                  # 1.
    addend = numpy.float64(z)
    s = product + addend                                           # 2.
    if not math.isfinite(s):                                       # inf or NaN: nothing to round
        return numpy.float32(s)
    back = s - product
    error = (product - (s - back)) + (addend - back)
    if error != 0.0:                                               # 3.
        mantissa, _ = math.frexp(s)                                # |s| = |mantissa| 2^e, 1/2 <= |mantissa| < 1
        if numpy.int64(abs(mantissa) * 9007199254740992.0) % 2 == 0:   # its 53-bit significand, even
            s = numpy.nextafter(s, math.inf if error > 0.0 else -math.inf)
    return numpy.float32(s)


@njit(cache=True)
def _tile_product_scalar(a, a_offset, a_row_stride, a_col_stride, packed_b, b_offset, kc, c, c_offset, ldc,
                         accumulate):
    """``_tile_product``'s portable twin: the same arguments (float32 arrays, flat) and the same
    arithmetic per element of the tile: a float32 sum from 0, over p < kc in order, one fused
    multiply-add per step (``_fma32``), then stored to c or, when ``accumulate``, added to c in
    one float32 addition. Plain numba, so it runs on any CPU; it is the reference that the AVX-512
    micro-kernel is tested against (bit for bit), not a path the kernel takes."""
    for i in range(MR):
        for j in range(NR):
            total = numpy.float32(0.0)
            for p in range(kc):
                total = _fma32(a[a_offset + i * a_row_stride + p * a_col_stride], packed_b[b_offset + p * NR + j],
                               total)
            k = c_offset + i * ldc + j
            c[k] = c[k] + total if accumulate else total


@njit(inline="always")
def _pack_b(b, b_transposed, K, N, pc, kc, jc, nc, packed):
    """B[pc:pc+kc, jc:jc+nc] -> packed[panel kc NR + p NR + j], panels NR columns wide,
    zero-padded on the right. b is B's storage, flat: (K, N), or (N, K) when b_transposed."""
    for jp in range(0, nc, NR):
        base = (jp // NR) * kc * NR
        width = min(NR, nc - jp)
        if width == NR:
            for p in range(kc):
                for v in range(NV):
                    if b_transposed:
                        _gather16(packed, base + p * NR + v * LANES, b, (jc + jp + v * LANES) * K + pc + p, K)
                    else:
                        _copy16(packed, base + p * NR + v * LANES, b, (pc + p) * N + jc + jp + v * LANES)
        else:
            for p in range(kc):
                for j in range(NR):
                    if j >= width:
                        packed[base + p * NR + j] = 0
                    elif b_transposed:
                        packed[base + p * NR + j] = b[(jc + jp + j) * K + pc + p]
                    else:
                        packed[base + p * NR + j] = b[(pc + p) * N + jc + jp + j]


@njit(inline="always")
def _pack_a_columns(a, M, pc, kc, ic, mc, packed):
    """A stored transposed, a flat (K, M): A[ic:ic+mc, pc:pc+kc] -> packed[p mc + i] (stored rows, copied)."""
    body = mc - mc % LANES
    for p in range(kc):
        source, target = (pc + p) * M + ic, p * mc
        for i in range(0, body, LANES):
            _copy16(packed, target + i, a, source + i)
        for i in range(body, mc):
            packed[target + i] = a[source + i]


@njit(cache=True)
def _product_block(a_stored, a_transposed, b_stored, b_transposed, c, i_lo, i_hi, j_lo, j_hi,
                   packed_b, packed_a, padded_a, tile):
    """c[i_lo:i_hi, j_lo:j_hi] = (A @ B)[i_lo:i_hi, j_lo:j_hi], one thread; A and B given by their
    C-contiguous storage and a transposed flag, c (M, N) C-contiguous. The loop nest is the
    module docstring's picture."""
    M, N = c.shape
    K = a_stored.shape[0] if a_transposed else a_stored.shape[1]
    a, b, c_flat = a_stored.ravel(), b_stored.ravel(), c.ravel()
    for jc in range(j_lo, j_hi, NC):                            # loop 5: NC columns of C and B
        nc = min(NC, j_hi - jc)
        for pc in range(0, K, KC):                              # loop 4: a K block; B's block packed (L3)
            kc = min(KC, K - pc)
            later_block = pc > 0                                # C holds the earlier K blocks: add to it
            _pack_b(b, b_transposed, K, N, pc, kc, jc, nc, packed_b)
            for ic in range(i_lo, i_hi, MC):                    # loop 3: MC rows; A's block (L2)
                mc = min(MC, i_hi - ic)
                if a_transposed:
                    _pack_a_columns(a, M, pc, kc, ic, mc, packed_a)
                for jr in range(0, nc, NR):                     # loop 2: a micro-panel of packed_b (L1 / L2)
                    width, j0, b_offset = min(NR, nc - jr), jc + jr, jr // NR * kc * NR
                    for i_r in range(0, mc, MR):                # loop 1: a sliver of A, a tile of C
                        height, i0 = min(MR, mc - i_r), ic + i_r
                        if a_transposed:
                            source, offset, row_stride, col_stride = packed_a, i_r, 1, mc
                        else:
                            source, offset, row_stride, col_stride = a, i0 * K + pc, K, 1
                        if height < MR:                         # the last rows, zero-padded to MR
                            for p in range(kc):
                                for i in range(MR):
                                    padded_a[p * MR + i] = (source[offset + i * row_stride + p * col_stride]
                                                            if i < height else 0)
                            source, offset, row_stride, col_stride = padded_a, 0, 1, MR
                        full = height == MR and width == NR     # else an edge tile: through the buffer
                        target, target_offset, ldc = (c_flat, i0 * N + j0, N) if full else (tile, 0, NR)
                        # the p loop, the tile in registers
                        _tile_product(source, offset, row_stride, col_stride, packed_b, b_offset, kc,
                                      target, target_offset, ldc, later_block and full)
                        if not full:
                            for i in range(height):
                                for j in range(width):
                                    if later_block:
                                        c[i0 + i, j0 + j] += tile[i * NR + j]
                                    else:
                                        c[i0 + i, j0 + j] = tile[i * NR + j]


@njit(parallel=True, cache=True)
def _gemm(a_stored, a_transposed, b_stored, b_transposed, c, n_parts):
    """c[g] (M, N) = A[g] @ B[g] for a stack of G products (3-D arrays). With at least
    n_parts products each thread takes whole products; else each product is cut into
    n_parts blocks of C's rows or columns (whichever is longer)."""
    G, M, N = c.shape
    slices = 1 if G >= n_parts else n_parts
    split_rows = M > N
    tiles, panels = (M + MR - 1) // MR, (N + NR - 1) // NR
    for part in prange(n_parts):
        packed_b = numpy.empty(KC * NC, dtype=c.dtype)
        packed_a = numpy.empty(KC * MC, dtype=c.dtype)
        padded_a = numpy.zeros(KC * MR, dtype=c.dtype)
        tile = numpy.empty(MR * NR, dtype=c.dtype)
        for item in range(part, G * slices, n_parts):
            g, s = item // slices, item % slices
            i_lo, i_hi, j_lo, j_hi = 0, M, 0, N                 # this item's block of C
            if split_rows:
                i_lo, i_hi = tiles * s // slices * MR, min(M, tiles * (s + 1) // slices * MR)
            else:
                j_lo, j_hi = panels * s // slices * NR, min(N, panels * (s + 1) // slices * NR)
            _product_block(a_stored[g], a_transposed, b_stored[g], b_transposed, c[g], i_lo, i_hi, j_lo, j_hi,
                           packed_b, packed_a, padded_a, tile)


def _stack_storage(array):
    """(C-contiguous storage as a (G, rows, cols) stack, transposed?) of an array
    of matrices (..., rows, cols), or None when neither it nor its transpose is contiguous."""
    if array.flags.c_contiguous:
        return array.reshape((-1,) + array.shape[-2:]), False
    flipped = array.swapaxes(-1, -2)
    if flipped.flags.c_contiguous:
        return flipped.reshape((-1,) + flipped.shape[-2:]), True
    return None


def kernel_operands(a, b, out=None):
    """The kernel's operands for ``a @ b`` (into ``out``): the two (storage, transposed)
    pairs, or None when the product goes to numpy.matmul (no AVX-512, not float32,
    a dimension under MIN_DIM, strides other than a matrix's or its transpose's,
    shapes that need broadcasting, an ``out`` that overlaps an input)."""
    if not HAS_AVX512 or a.ndim < 2 or b.ndim != a.ndim:
        return None
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    if (a.shape[:-2] != b.shape[:-2] or b.shape[-2] != K or min(M, K, N) < MIN_DIM
            or a.dtype != numpy.float32 or b.dtype != numpy.float32
            or (out is not None and (out.shape != a.shape[:-1] + (N,) or out.dtype != numpy.float32
                                     or not out.flags.c_contiguous
                                     or numpy.may_share_memory(out, a) or numpy.may_share_memory(out, b)))):
        return None
    a_storage, b_storage = _stack_storage(a), _stack_storage(b)
    if a_storage is None or b_storage is None:
        return None
    return a_storage, b_storage


def matmul(a, b, out=None):
    """``a @ b`` for matrices or equal-shaped stacks of them (..., M, K) @ (..., K, N),
    into ``out`` when given: the kernel where ``kernel_operands`` allows and the machine's
    choice for the shape class is the kernel (kernels/matmul_choice.py), else numpy.matmul."""
    operands = kernel_operands(a, b, out)
    if operands is None or chooser().choice(a, b) == BLAS:
        return numpy.matmul(a, b, out=out)
    return _kernel_product(operands, a, b, out)


def kernel_matmul(a, b, out=None):
    """``a @ b`` on the kernel wherever ``kernel_operands`` allows, whatever the choice (the tests
    and benchmarks check and time the kernel itself), else numpy.matmul."""
    operands = kernel_operands(a, b, out)
    if operands is None:
        return numpy.matmul(a, b, out=out)
    return _kernel_product(operands, a, b, out)


def chooser():
    """This process's MatmulChooser: the machine's cache file, read on first use (AVX-512 only)."""
    global _chooser
    if _chooser is None:
        machine = machine_fingerprint(numba.get_num_threads())
        _chooser = MatmulChooser(cache_path(machine), machine, lambda a, b: time_both(kernel_matmul, a, b))
    return _chooser


def set_chooser(new):
    """Replace this process's chooser (None: the machine's, made again on next use); returns the old one."""
    global _chooser
    old, _chooser = _chooser, new
    return old


def _kernel_product(operands, a, b, out):
    M, N = a.shape[-2], b.shape[-1]
    if out is None:
        out = numpy.empty(a.shape[:-1] + (N,), dtype=numpy.float32)
    _gemm(*operands[0], *operands[1], out.reshape(-1, M, N), numba.get_num_threads())
    return out


JITTED = (_gemm,)   # _product_block compiles inside _gemm
