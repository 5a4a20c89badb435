"""numba twin of numgpt.ops.linear.matmul: float32 matrix products on
AVX-512, for the linear layers' forward and backward products and (through
kernels/attention.py) attention's per-head products.

Why not NumPy's BLAS everywhere: a BLAS may run narrower kernels than the
CPU has, and OpenBLAS's idle threads spin for a while after each call, which
slows the numba kernels that run next. On this project's machine (AMD EPYC,
AVX-512) the environment pins OpenBLAS to its AVX2 ("Haswell") kernels,
~250 GFLOP/s on two cores; this kernel reaches 360-460 on the step's linear
products (benchmarks/results.md has the table). Without AVX-512
(``HAS_AVX512`` false) every product goes to NumPy, where the BLAS is the
better choice.

The blocking is BLIS's, with a register micro-kernel written in LLVM IR
(numba's ``@intrinsic``), because a tile kept in a numba array lives in
memory, not in registers:

- ``_tile_product``: an MR x NR = 8 x 48 tile of C in 24 AVX-512 registers;
  per step p of the sum, 3 vector loads of packed B, 8 broadcasts of A and
  24 fused multiply-adds. A is read in place through two strides, so a row-
  or column-major operand needs no packing; B is read from packed panels.
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
goes to ``numpy.matmul``.
"""
import llvmlite.binding
import numba
import numpy
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16                # float32 lanes of an AVX-512 register
MR, NV = 8, 3             # the micro-tile: MR rows x NV registers (NR = 48 columns)
NR = NV * LANES
KC, MC, NC = 256, 256, 768   # blocks of K, M (transposed A) and N (B) packed at a time
MIN_DIM = 16

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
        b_vectors = [builder.load(builder.bitcast(builder.gep(b_base, [builder.add(b_row, ir.Constant(_I64, v * LANES))]),
                                                  _VEC.as_pointer()), align=4) for v in range(NV)]
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
    C-contiguous storage and a transposed flag, c (M, N) C-contiguous."""
    M, N = c.shape
    K = a_stored.shape[0] if a_transposed else a_stored.shape[1]
    a, b, c_flat = a_stored.ravel(), b_stored.ravel(), c.ravel()
    for jc in range(j_lo, j_hi, NC):
        nc = min(NC, j_hi - jc)
        for pc in range(0, K, KC):
            kc = min(KC, K - pc)
            later_block = pc > 0                                # C holds the earlier K blocks: add to it
            _pack_b(b, b_transposed, K, N, pc, kc, jc, nc, packed_b)
            for ic in range(i_lo, i_hi, MC):
                mc = min(MC, i_hi - ic)
                if a_transposed:
                    _pack_a_columns(a, M, pc, kc, ic, mc, packed_a)
                for jr in range(0, nc, NR):
                    width, j0, b_offset = min(NR, nc - jr), jc + jr, jr // NR * kc * NR
                    for ir in range(0, mc, MR):
                        height, i0 = min(MR, mc - ir), ic + ir
                        if a_transposed:
                            source, offset, row_stride, col_stride = packed_a, ir, 1, mc
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
    into ``out`` when given: the kernel where ``kernel_operands`` allows, else numpy.matmul."""
    operands = kernel_operands(a, b, out)
    if operands is None:
        return numpy.matmul(a, b, out=out)
    M, N = a.shape[-2], b.shape[-1]
    if out is None:
        out = numpy.empty(a.shape[:-1] + (N,), dtype=numpy.float32)
    _gemm(*operands[0], *operands[1], out.reshape(-1, M, N), numba.get_num_threads())
    return out


JITTED = (_gemm,)   # _product_block compiles inside _gemm
