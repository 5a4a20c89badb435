"""bf16 matrix products on the CPU's matrix units: AMX tiles (TDPBF16PS) and
AVX512_BF16 (VDPBF16PS), with float32 accumulation; their operand packing,
their scalar twin and the numba driver that runs either.

Instruction sets and detection: kernels/bf16_detect.py decides the path
(``amx`` needs amx-tile + amx-bf16 and Linux's permission for the tile
state, ``avx512_bf16`` needs avx512bf16 + avx512f/bw/vl). The micro-kernels
are LLVM IR text (``amx_kernel_ir``, ``avx512_kernel_ir``), compiled by
llvmlite into a module of their own (``compiled_kernel``) only when that path
is chosen, so importing numgpt on a CPU without them compiles nothing and
cannot fail. The driver calls the compiled function through ctypes from a
numba parallel loop; the scalar twin (``twin_kernel``) has the same C
signature, so the same driver, packing and edge handling run on any CPU
(tests/test_bf16_kernels.py), and only the instructions themselves need the
hardware.

Rounding. Both operands are rounded to bf16 while they are packed
(``bf16_bits``: round to nearest, ties to even, the bit trick derived in
numgpt/bf16.py; NaN kept a quiet NaN), the same rounding as VCVTNE2PS2BF16
and as the reference ``numgpt.bf16.matmul_bf16``. The products of two bf16
numbers (8-bit significands) are exact in float32; the units add them into
float32 accumulators, rounding to nearest even whatever MXCSR says, and treat
denormal inputs and results as zero (DAZ/FTZ): the twin does the same.

Operand layouts (uint16 bf16 bits; M, N, K padded with zeros to ``M_pad``,
``N_pad``, ``K_pad``, multiples of 32, so every tile is whole: the padding adds
zero products and the padded rows and columns of C are dropped):

  A  (G, M_pad, K_pad)            row-major; a tile row or a register pair is
                                  2 consecutive k of one row of A
  B  (G, N_pad/16, K_pad/2, 32)   VNNI pairs in panels of 16 columns:
                                  packed[g, j, k2, 2n + t] = B[g, 2 k2 + t, 16 j + n]
                                  one row (k2) of a panel is 64 bytes: the 16
                                  pairs a TDPBF16PS tile row or a VDPBF16PS zmm
                                  register takes, so one packing serves both units
  C  (G, M_pad, N_pad)            float32, row-major

The loop nest. The driver (``_drive``) gives each thread a range of rows or
of panels, cuts it into blocks of C of ROWS_BLOCK x PANELS_BLOCK panels
(256 x 256 floats, 256 KiB: in L2 while all of K adds into it) and calls the
micro-kernel once per block and per KC = 256 of K (rows [row_lo, row_hi),
column panels [panel_lo, panel_hi), pairs of K [k_lo, k_hi)):

  for rows, step ROWS_BLOCK           driver   C's block in L2
   for panels, step PANELS_BLOCK      driver
    for kc in K, step KC = 256        driver   A's block 256 x KC x 2 = 128 KiB, B's
                                               block KC x 256 x 2 = 128 KiB: L2
     AVX512_BF16 kernel:
     for j in panels, step 2          kernel   B's sliver KC x 32 x 2 = 16 KiB: L1
      for r in rows, step 8           kernel   C's micro-tile: 8 x 2 zmm
       for k in KC, step 2            kernel   the dot products, in zmm registers
     AMX kernel:
     for r in rows, step 32           kernel   A's sliver 32 x KC x 2 = 16 KiB, L1
      for j in panels, step 2         kernel   C's block: 2 x 2 tiles
       for k in KC, step 32           kernel   the dot products, in tiles

AMX (``amx_kernel_ir``; palette 1: 8 tiles of at most 16 rows x 64 bytes):
tiles 0-3 hold a 2 x 2 block of C (four 16 x 16 float32 accumulators),
tiles 4-5 two 16-row slices of A (16 rows x 32 bf16), tiles 6-7 two panels
of B (16 pair rows x 16 columns x 2 bf16). Each step of 32 along K is four
TILELOADDs and four independent TDPBF16PS: each B tile serves two A tiles
and each A tile two B tiles, and the four accumulators are independent
chains, so the unit is not waiting on one tile's latency (a single
accumulator is latency-bound: ~16 cycles per TDPBF16PS). The tile config
(LDTILECFG) is set at the start of every kernel call, on the thread that
runs it, and released (TILERELEASE) at its end, so no tile state outlives a
call. Budget: all 8 tiles, 8 KiB.

AVX512_BF16 (``avx512_kernel_ir``): an 8 x 32 block of C in MR x NV = 8 x 2
zmm accumulators (16 floats each); per pair step k2, NV = 2 loads of B (one
64-byte row of two panels), 8 broadcasts of A's pair (one 32-bit load each)
and 16 VDPBF16PS. Registers: 16 accumulators + 2 B + 1 broadcast = 19 of 32;
16 independent chains cover VDPBF16PS's latency (~5 cycles) at 2 per cycle
(Sapphire Rapids) or 1 (Zen 4).

Measured on Zen 4 (AMD EPYC, AVX512_BF16, no AMX; 2 cores), one run each
(benchmarks/bf16_gemm.md has the side-by-side table): the AVX512_BF16 kernel
runs the seed's products at 380-430 GFLOP/s (its peak: one 512-bit VDPBF16PS,
64 FLOPs, per cycle per core), twice the float32 kernel's rate there. Two
changes came from measuring: the kernel first ran rows outer, so B's whole K
block (1.2 MiB for N = 2304, 25 MiB for the 50257-wide head) streamed from
L3 or memory once per 8 rows (200-370 GFLOP/s); and without the driver's
blocks of C the head's products ran at 285-340. The AMX kernel is not
measured (no AMX CPU has run it yet): its IR is checked to compile to
TDPBF16PS/TILELOADD/LDTILECFG for a Sapphire Rapids target, and the driver
with the twin in its place against the reference.
"""
import ctypes
import functools
import threading

import llvmlite.binding as llvm
import numba
import numpy
from llvmlite import ir
from numba import cfunc, njit, prange, types
from numba.extending import intrinsic, overload

TILE = 16                     # rows of an AMX tile; float32 columns of a C tile; columns of a B panel
PAD = 32                      # M, N and K are padded to multiples of this (one AMX step of K, a 2 x 2 tile block)
KC = 256                      # K block of one kernel call (a multiple of PAD)
ROWS_BLOCK = 256              # MC: rows of C per kernel call (a multiple of PAD)
PANELS_BLOCK = 16             # NC: panels of C per kernel call (even): C's block 256 x 256 floats, 256 KiB
AVX512_MR, AVX512_NV = 8, 2   # the AVX512_BF16 micro-tile: 8 rows x 2 panels (32 columns)
PACK_PANELS = 8               # panels packed together from a B whose rows are contiguous: 512 bytes of a row

AMX_FUNCTION, AVX512_FUNCTION = "numgpt_amx_bf16", "numgpt_avx512_bf16"
AMX_TARGET_FEATURES = "+amx-tile,+amx-bf16,+avx512f,+avx512bw,+avx512vl,+avx512bf16"
AVX512_TARGET_FEATURES = "+avx512f,+avx512bw,+avx512vl,+avx512bf16"

# the micro-kernel's C signature: (a, b, c, k_pad, n_pad, row_lo, row_hi, panel_lo, panel_hi, k_lo, k_hi, accumulate)
KERNEL_ARGUMENTS = ("ptr %a", "ptr %b", "ptr %c", "i64 %k_pad", "i64 %n_pad", "i64 %row_lo", "i64 %row_hi",
                    "i64 %panel_lo", "i64 %panel_hi", "i64 %k_lo", "i64 %k_hi", "i64 %accumulate")
KERNEL_CTYPE = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, *[ctypes.c_int64] * 9)


def padded(n):
    """n rounded up to a multiple of PAD (at least PAD)."""
    return max(PAD, -(-n // PAD) * PAD)


# ---------------------------------------------------------------- the IR of the two micro-kernels

def amx_kernel_ir():
    """LLVM IR of the AMX micro-kernel (module docstring: tiles 0-3 C, 4-5 A, 6-7 B).
    Preconditions (the driver's): row_lo < row_hi, multiples of 32; panel_lo < panel_hi,
    even; k_lo < k_hi, multiples of 32."""
    config = [f"  %cfg.col{t} = getelementptr i8, ptr %cfg, i64 {16 + 2 * t}\n"
              f"  store i16 64, ptr %cfg.col{t}\n"                       # bytes per row of tile t
              f"  %cfg.row{t} = getelementptr i8, ptr %cfg, i64 {48 + t}\n"
              f"  store i8 16, ptr %cfg.row{t}\n" for t in range(8)]      # rows of tile t
    c_tiles = [(0, "c00"), (1, "c01"), (2, "c10"), (3, "c11")]
    load_c = "".join(f"  call void @llvm.x86.tileloadd64(i8 {t}, ptr %{name}, i64 %c_stride)\n" for t, name in c_tiles)
    store_c = "".join(f"  call void @llvm.x86.tilestored64(i8 {t}, ptr %{name}, i64 %c_stride)\n"
                      for t, name in c_tiles)
    return f"""
declare void @llvm.memset.p0.i64(ptr, i8, i64, i1 immarg)
declare void @llvm.x86.ldtilecfg(ptr)
declare void @llvm.x86.tilerelease()
declare void @llvm.x86.tilezero(i8 immarg)
declare void @llvm.x86.tileloadd64(i8 immarg, ptr, i64)
declare void @llvm.x86.tilestored64(i8 immarg, ptr, i64)
declare void @llvm.x86.tdpbf16ps(i8 immarg, i8 immarg, i8 immarg)

define void @{AMX_FUNCTION}({", ".join(KERNEL_ARGUMENTS)}) #0 {{
entry:
  %cfg = alloca [64 x i8], align 64                 ; the tile config: palette 1, 8 tiles of 16 x 64 bytes
  call void @llvm.memset.p0.i64(ptr align 64 %cfg, i8 0, i64 64, i1 false)
  store i8 1, ptr %cfg
{"".join(config)}  call void @llvm.x86.ldtilecfg(ptr %cfg)
  %a_stride = shl i64 %k_pad, 1                     ; bytes per row of A
  %c_stride = shl i64 %n_pad, 2                     ; bytes per row of C
  %b_panel = shl i64 %k_pad, 5                      ; bytes per panel of B: K_pad/2 rows x 64
  %s_lo = lshr i64 %k_lo, 5
  %s_hi = lshr i64 %k_hi, 5
  %accumulating = icmp ne i64 %accumulate, 0
  br label %rows
rows:
  %r = phi i64 [%row_lo, %entry], [%r.next, %rows.end]
  %r16 = add i64 %r, 16
  %a.row0 = mul i64 %r, %a_stride
  %a.row1 = mul i64 %r16, %a_stride
  %c.row0 = mul i64 %r, %c_stride
  %c.row1 = mul i64 %r16, %c_stride
  br label %cols
cols:
  %j = phi i64 [%panel_lo, %rows], [%j.next, %cols.end]
  %j1 = add i64 %j, 1
  %c.col0 = shl i64 %j, 6                           ; 16 floats per panel
  %c.col1 = shl i64 %j1, 6
  %c00.off = add i64 %c.row0, %c.col0
  %c01.off = add i64 %c.row0, %c.col1
  %c10.off = add i64 %c.row1, %c.col0
  %c11.off = add i64 %c.row1, %c.col1
  %c00 = getelementptr i8, ptr %c, i64 %c00.off
  %c01 = getelementptr i8, ptr %c, i64 %c01.off
  %c10 = getelementptr i8, ptr %c, i64 %c10.off
  %c11 = getelementptr i8, ptr %c, i64 %c11.off
  %b0.off = mul i64 %j, %b_panel
  %b1.off = mul i64 %j1, %b_panel
  %b0 = getelementptr i8, ptr %b, i64 %b0.off
  %b1 = getelementptr i8, ptr %b, i64 %b1.off
  br i1 %accumulating, label %load_c, label %zero_c
load_c:
{load_c}  br label %steps
zero_c:
{"".join(f"  call void @llvm.x86.tilezero(i8 {t})" + chr(10) for t, _ in c_tiles)}  br label %steps
steps:                                              ; one step of 32 along K
  %s = phi i64 [%s_lo, %load_c], [%s_lo, %zero_c], [%s.next, %steps]
  %a.k = shl i64 %s, 6                              ; 32 bf16 = 64 bytes along a row of A
  %a0.off = add i64 %a.row0, %a.k
  %a1.off = add i64 %a.row1, %a.k
  %a0 = getelementptr i8, ptr %a, i64 %a0.off
  %a1 = getelementptr i8, ptr %a, i64 %a1.off
  %b.k = shl i64 %s, 10                             ; 16 pair rows x 64 bytes
  %b0.k = getelementptr i8, ptr %b0, i64 %b.k
  %b1.k = getelementptr i8, ptr %b1, i64 %b.k
  call void @llvm.x86.tileloadd64(i8 4, ptr %a0, i64 %a_stride)
  call void @llvm.x86.tileloadd64(i8 5, ptr %a1, i64 %a_stride)
  call void @llvm.x86.tileloadd64(i8 6, ptr %b0.k, i64 64)
  call void @llvm.x86.tileloadd64(i8 7, ptr %b1.k, i64 64)
  call void @llvm.x86.tdpbf16ps(i8 0, i8 4, i8 6)
  call void @llvm.x86.tdpbf16ps(i8 1, i8 4, i8 7)
  call void @llvm.x86.tdpbf16ps(i8 2, i8 5, i8 6)
  call void @llvm.x86.tdpbf16ps(i8 3, i8 5, i8 7)
  %s.next = add i64 %s, 1
  %s.more = icmp ult i64 %s.next, %s_hi
  br i1 %s.more, label %steps, label %store_c
store_c:
{store_c}  br label %cols.end
cols.end:
  %j.next = add i64 %j, 2
  %j.more = icmp ult i64 %j.next, %panel_hi
  br i1 %j.more, label %cols, label %rows.end
rows.end:
  %r.next = add i64 %r, 32
  %r.more = icmp ult i64 %r.next, %row_hi
  br i1 %r.more, label %rows, label %exit
exit:
  call void @llvm.x86.tilerelease()
  ret void
}}

attributes #0 = {{ "target-features"="{AMX_TARGET_FEATURES}" }}
"""


def avx512_kernel_ir():
    """LLVM IR of the AVX512_BF16 micro-kernel (module docstring: 8 x 2 zmm accumulators).
    Preconditions (the driver's): row_lo < row_hi, multiples of 8; panel_lo < panel_hi,
    even; k_lo < k_hi, even."""
    rows, panels = range(AVX512_MR), range(AVX512_NV)
    lines = []

    def emit(text):
        lines.append("  " + text)

    emit("%a_stride = shl i64 %k_pad, 1")
    emit("%c_stride = shl i64 %n_pad, 2")
    emit("%b_panel = shl i64 %k_pad, 5")
    emit("%p_lo = lshr i64 %k_lo, 1")
    emit("%p_hi = lshr i64 %k_hi, 1")
    emit("%accumulating = icmp ne i64 %accumulate, 0")
    emit("br label %cols")
    lines.append("cols:                                             ; panels outer: B's sliver stays in L1")
    emit("%j = phi i64 [%panel_lo, %entry], [%j.next, %cols.end]")
    for v in panels:
        emit(f"%j{v} = add i64 %j, {v}")
        emit(f"%b{v}.off = mul i64 %j{v}, %b_panel")
        emit(f"%b{v} = getelementptr i8, ptr %b, i64 %b{v}.off")
        emit(f"%c.col{v} = shl i64 %j{v}, 6")
    emit("br label %rows")
    lines.append("rows:                                             ; rows inner: A's block streams from L2")
    emit("%r = phi i64 [%row_lo, %cols], [%r.next, %rows.end]")
    for i in rows:
        emit(f"%r{i} = add i64 %r, {i}")
        emit(f"%a.row{i} = mul i64 %r{i}, %a_stride")
        emit(f"%c.row{i} = mul i64 %r{i}, %c_stride")
        for v in panels:
            emit(f"%c{i}{v}.off = add i64 %c.row{i}, %c.col{v}")
            emit(f"%c{i}{v} = getelementptr i8, ptr %c, i64 %c{i}{v}.off")
            emit(f"%c{i}{v}.old = load <16 x float>, ptr %c{i}{v}, align 4")   # C is allocated whole: safe to read
            emit(f"%c{i}{v}.init = select i1 %accumulating, <16 x float> %c{i}{v}.old, <16 x float> zeroinitializer")
    emit("br label %pairs")
    lines.append("pairs:                                            ; one pair of K")
    emit("%p = phi i64 [%p_lo, %rows], [%p.next, %pairs]")
    for i in rows:
        for v in panels:
            emit(f"%acc{i}{v} = phi <16 x float> [%c{i}{v}.init, %rows], [%new{i}{v}, %pairs]")
    emit("%b.k = shl i64 %p, 6")                                       # 64 bytes per pair row of a panel
    emit("%a.k = shl i64 %p, 2")                                       # 2 bf16 per pair
    for v in panels:
        emit(f"%b{v}.k = getelementptr i8, ptr %b{v}, i64 %b.k")
        emit(f"%bv{v} = load <32 x bfloat>, ptr %b{v}.k, align 4")
    for i in rows:
        emit(f"%a{i}.off = add i64 %a.row{i}, %a.k")
        emit(f"%a{i}.ptr = getelementptr i8, ptr %a, i64 %a{i}.off")
        emit(f"%a{i}.pair = load i32, ptr %a{i}.ptr, align 4")
        emit(f"%a{i}.one = insertelement <16 x i32> poison, i32 %a{i}.pair, i64 0")
        emit(f"%a{i}.all = shufflevector <16 x i32> %a{i}.one, <16 x i32> poison, <16 x i32> zeroinitializer")
        emit(f"%a{i}.bf = bitcast <16 x i32> %a{i}.all to <32 x bfloat>")
        for v in panels:
            emit(f"%new{i}{v} = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512("
                 f"<16 x float> %acc{i}{v}, <32 x bfloat> %a{i}.bf, <32 x bfloat> %bv{v})")
    emit("%p.next = add i64 %p, 1")
    emit("%p.more = icmp ult i64 %p.next, %p_hi")
    emit("br i1 %p.more, label %pairs, label %store_c")
    lines.append("store_c:")
    for i in rows:
        for v in panels:
            emit(f"store <16 x float> %new{i}{v}, ptr %c{i}{v}, align 4")
    emit("br label %rows.end")
    lines.append("rows.end:")
    emit(f"%r.next = add i64 %r, {AVX512_MR}")
    emit("%r.more = icmp ult i64 %r.next, %row_hi")
    emit("br i1 %r.more, label %rows, label %cols.end")
    lines.append("cols.end:")
    emit(f"%j.next = add i64 %j, {AVX512_NV}")
    emit("%j.more = icmp ult i64 %j.next, %panel_hi")
    emit("br i1 %j.more, label %cols, label %exit")
    lines.append("exit:")
    emit("ret void")
    body = "\n".join(lines)
    return f"""
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)

define void @{AVX512_FUNCTION}({", ".join(KERNEL_ARGUMENTS)}) #0 {{
entry:
{body}
}}

attributes #0 = {{ "target-features"="{AVX512_TARGET_FEATURES}" }}
"""


KERNEL_IR = {"amx": (amx_kernel_ir, AMX_FUNCTION), "avx512_bf16": (avx512_kernel_ir, AVX512_FUNCTION)}


def _initialize_llvm():
    # llvmlite >= 0.44 initializes LLVM itself; the native target's printer is needed for assembly
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def target_machine(cpu, features):
    """An llvmlite target machine for x86-64 ``cpu`` with ``features`` ('+a,+b'), optimizing fully."""
    _initialize_llvm()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=cpu, features=features, opt=3, jit=True)


def parsed_module(ir_text):
    """The IR text parsed and verified (a bad module raises here, naming the line)."""
    _initialize_llvm()
    module = llvm.parse_assembly(ir_text)
    module.verify()
    return module


def assembly_for(path, cpu="sapphirerapids"):
    """The x86 assembly of ``path``'s micro-kernel compiled for ``cpu`` (which need not be this
    host's): proves instruction selection, runs nothing."""
    build, _ = KERNEL_IR[path]
    features = AMX_TARGET_FEATURES if path == "amx" else AVX512_TARGET_FEATURES
    return target_machine(cpu, features).emit_assembly(parsed_module(build()))


_engines = []   # the execution engines of compiled kernels: alive as long as the process


@functools.cache
def compiled_kernel(path):
    """The ctypes function of ``path``'s micro-kernel ('amx' or 'avx512_bf16'), JIT-compiled for
    this host on first use. Only call this when kernels/bf16_detect.py chose ``path``: on a
    CPU without the instructions the code would fault."""
    build, name = KERNEL_IR[path]
    machine = target_machine(llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())
    engine = llvm.create_mcjit_compiler(parsed_module(build()), machine)
    engine.finalize_object()
    _engines.append(engine)
    return KERNEL_CTYPE(engine.get_function_address(name))


# ---------------------------------------------------------------- rounding and packing (any CPU)

@intrinsic
def _float_bits(typingctx, value):
    """The uint32 bit pattern of a float32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(value), codegen


@intrinsic
def _bits_float(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of an unsigned integer."""
    if not isinstance(bits, types.Integer) or bits.signed:
        return None

    def codegen(context, builder, signature, args):
        low = args[0] if bits.bitwidth == 32 else builder.trunc(args[0], ir.IntType(32))
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@njit(inline="always")
def bf16_bits(value):
    """float32 ``value`` rounded to bf16 (nearest, ties to even; NaN kept quiet), as its 16 bits."""
    u = numpy.uint64(_float_bits(numpy.float32(value)))
    if (u & 0x7FFFFFFF) > 0x7F800000:                   # NaN: set the quiet bit, keep sign and payload top
        return numpy.uint16((u | 0x00400000) >> 16)
    return numpy.uint16(((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF)


@njit(inline="always")
def bf16_value(bits):
    """The float32 of bf16 ``bits`` (exact)."""
    return _bits_float(numpy.uint64(bits) << numpy.uint64(16))


@njit(parallel=True, cache=True)
def round_flat(source, target):
    """target[i] = source[i] rounded to bf16, as float32 (1-D float32 arrays): the emulated
    path's one pass over an operand."""
    for i in prange(source.size):
        target[i] = bf16_value(bf16_bits(source[i]))


@njit(parallel=True, cache=True)
def pack_a(a, packed):
    """A (G, M, K) float32, any strides -> packed (G, M_pad, K_pad) bf16 bits, row-major,
    zero-padded (module docstring's layout)."""
    G, M, K = a.shape
    M_pad, K_pad = packed.shape[1], packed.shape[2]
    for item in prange(G * M_pad):
        g, i = item // M_pad, item % M_pad
        for k in range(K_pad):
            packed[g, i, k] = bf16_bits(a[g, i, k]) if i < M and k < K else 0


def operand_bits(value):
    """An operand's element as bf16 bits: a float32 rounded (``bf16_bits``), uint16 bf16 bits (a
    weight from numgpt.precision's cache) as they are. Compiled code only (the overload below)."""
    raise NotImplementedError("operand_bits runs in numba-compiled code only")


@overload(operand_bits)                    # inlined by LLVM (numba's IR-level inline warns here)
def _operand_bits(value):
    if isinstance(value, types.Integer):
        def as_they_are(value):
            return numpy.uint16(value)
        return as_they_are

    def rounded_bits(value):
        return bf16_bits(value)
    return rounded_bits


@njit(parallel=True, cache=True)
def bits_flat(source, target):
    """target[i] = source[i] rounded to bf16, as uint16 bits (1-D float32 -> uint16)."""
    for i in prange(source.size):
        target[i] = bf16_bits(source[i])


@njit(inline="always")
def _pair_word(b, g, k2, column, K, N):
    """The VNNI pair (B[g, 2 k2, column], B[g, 2 k2 + 1, column]) as bf16 bits in one uint32, the
    even k in the low half (little-endian: uint16 2n and 2n + 1 of a packed row); 0 in the padding."""
    k = 2 * k2
    low = operand_bits(b[g, k, column]) if k < K and column < N else numpy.uint16(0)
    high = operand_bits(b[g, k + 1, column]) if k + 1 < K and column < N else numpy.uint16(0)
    return numpy.uint32(low) | (numpy.uint32(high) << numpy.uint32(16))


@njit(inline="always")
def _whole_pair_word(b, g, k2, column):
    """_pair_word for a pair and column inside B: no bounds to test, so the loop vectorises."""
    return (numpy.uint32(operand_bits(b[g, 2 * k2, column]))
            | (numpy.uint32(operand_bits(b[g, 2 * k2 + 1, column])) << numpy.uint32(16)))


def pack_b_vnni(b, packed):
    """B (G, K, N) float32 (or uint16 bf16 bits), any strides -> packed (G, N_pad/16, K_pad/2, 32)
    bf16 bits, C-contiguous:
    packed[g, j, k2, 2n + t] = B[g, 2 k2 + t, 16 j + n], zero outside B. Written as uint32 words,
    one VNNI pair each (``_pack_b_words``)."""
    _pack_b_words(b, packed.view(numpy.uint32))


@njit(parallel=True, cache=True)
def _pack_b_words(b, words):
    """words[g, j, k2, n] = the pair (B[g, 2 k2, 16 j + n], B[g, 2 k2 + 1, 16 j + n]).

    Two loop orders, one result, chosen by B's layout. A transposed view (the forward's
    W.T: each column of B contiguous) is read down its columns, one panel per thread step:
    the panel's packed rows (K_pad/2 x 64 bytes) stay in L1 while 16 columns stream in.
    Any other B (the backward's W, an activation: rows contiguous) is read along its rows,
    PACK_PANELS panels at a time: one panel alone would take 64 bytes of each row, a new
    page per row (2.5 ns per element, against 0.7 this way, on Zen 4)."""
    G, K, N = b.shape
    panels, pairs = words.shape[1], words.shape[2]
    whole_pairs, whole_panels = K // 2, N // TILE
    if b.strides[1] == b.itemsize and b.strides[2] != b.itemsize:        # columns contiguous
        for item in prange(G * panels):
            g, j = item // panels, item % panels
            inside = whole_pairs if j < whole_panels else 0                # pairs with no bound to test
            for n in range(TILE):
                column = TILE * j + n
                for k2 in range(inside):
                    words[g, j, k2, n] = _whole_pair_word(b, g, k2, column)
                for k2 in range(inside, pairs):
                    words[g, j, k2, n] = _pair_word(b, g, k2, column, K, N)
        return
    blocks = -(-panels // PACK_PANELS)
    for item in prange(G * blocks):
        g, block = item // blocks, item % blocks
        for k2 in range(pairs):
            for j in range(block * PACK_PANELS, min(panels, (block + 1) * PACK_PANELS)):
                if k2 < whole_pairs and j < whole_panels:
                    for n in range(TILE):
                        words[g, j, k2, n] = _whole_pair_word(b, g, k2, TILE * j + n)
                else:
                    for n in range(TILE):
                        words[g, j, k2, n] = _pair_word(b, g, k2, TILE * j + n, K, N)


# ---------------------------------------------------------------- the scalar twin

@njit(inline="always")
def _flushed(value):
    """value, or a zero of its sign when it is a float32 denormal (DAZ/FTZ)."""
    if value != 0 and abs(value) < numpy.float32(1.1754943508222875e-38):
        return numpy.float32(0.0) * value
    return value


@njit(inline="always")
def _twin_pairs(a, b, c, k_pad, n_pad, row_lo, row_hi, panel_lo, panel_hi, k_lo, k_hi, accumulate, odd_first):
    """What either unit computes on the packed operands (flat arrays: a (M_pad K_pad) and
    b (N_pad/16 K_pad/2 32) uint16, c (M_pad N_pad) float32), element by element: from C (or 0),
    for each pair k2 of K in order, the pair's two products (exact in float32) added one at a
    time, rounded to float32 after each, denormals read and written as zero. TDPBF16PS adds the
    even element of a pair first, VDPBF16PS the odd one (the Intel SDM's pseudo-code)."""
    pairs_per_panel = k_pad // 2
    first, second = (1, 0) if odd_first else (0, 1)
    for i in range(row_lo, row_hi):
        for n in range(TILE * panel_lo, TILE * panel_hi):
            j, column = n // TILE, n % TILE
            total = c[i * n_pad + n] if accumulate else numpy.float32(0.0)
            for k2 in range(k_lo // 2, k_hi // 2):
                b_row = (j * pairs_per_panel + k2) * 2 * TILE + 2 * column
                for t in (first, second):
                    x = _flushed(bf16_value(a[i * k_pad + 2 * k2 + t]))
                    y = _flushed(bf16_value(b[b_row + t]))
                    total = _flushed(numpy.float32(total + x * y))
            c[i * n_pad + n] = total


_TWIN_SIGNATURE = types.void(types.voidptr, types.voidptr, types.voidptr, *[types.int64] * 9)


def _twin(odd_first):
    @cfunc(_TWIN_SIGNATURE, cache=True)
    def twin(a_ptr, b_ptr, c_ptr, k_pad, n_pad, row_lo, row_hi, panel_lo, panel_hi, k_lo, k_hi, accumulate):
        m_pad = row_hi        # the rows the twin may touch: all before row_hi
        a = numba.carray(a_ptr, (m_pad * k_pad,), numpy.uint16)
        b = numba.carray(b_ptr, (n_pad * k_pad,), numpy.uint16)
        c = numba.carray(c_ptr, (m_pad * n_pad,), numpy.float32)
        _twin_pairs(a, b, c, k_pad, n_pad, row_lo, row_hi, panel_lo, panel_hi, k_lo, k_hi, accumulate != 0,
                    odd_first)
    return twin


@functools.cache
def twin_kernel(path):
    """The scalar twin of ``path``'s micro-kernel ('amx' or 'avx512_bf16') as a ctypes function
    with the micro-kernel's signature: the driver runs it in the kernel's place on any CPU."""
    twin = _twin(odd_first=path == "avx512_bf16")
    return KERNEL_CTYPE(twin.address)


# ---------------------------------------------------------------- the driver

@intrinsic
def _data_pointer(typingctx, array):
    """An array's data pointer, as a void pointer for a ctypes call."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.bitcast(data, ir.IntType(8).as_pointer())

    return types.voidptr(array), codegen


@njit(parallel=True)
def _drive(kernel, packed_a, packed_b, c, n_parts):
    """c[g] (M_pad, N_pad) = A[g] @ B[g] from the packed operands: each of the n_parts threads
    takes whole products (a stack at least n_parts deep) or a block of rows or of panels of
    one (whichever is longer), and calls ``kernel`` per block of C (ROWS_BLOCK x PANELS_BLOCK
    panels) and per KC along K (the module docstring's loop nest)."""
    G, M_pad, K_pad = packed_a.shape
    N_pad = c.shape[2]
    slices = 1 if G >= n_parts else n_parts
    row_blocks, panel_pairs = M_pad // PAD, N_pad // PAD
    split_rows = row_blocks >= panel_pairs
    for part in prange(n_parts):
        for item in range(part, G * slices, n_parts):
            g, s = item // slices, item % slices
            row_lo, row_hi, panel_lo, panel_hi = 0, M_pad, 0, N_pad // TILE
            if split_rows:
                row_lo, row_hi = row_blocks * s // slices * PAD, row_blocks * (s + 1) // slices * PAD
            else:
                panel_lo, panel_hi = panel_pairs * s // slices * 2, panel_pairs * (s + 1) // slices * 2
            for block_lo in range(row_lo, row_hi, ROWS_BLOCK):             # MC rows of C ...
                block_hi = min(row_hi, block_lo + ROWS_BLOCK)
                for chunk_lo in range(panel_lo, panel_hi, PANELS_BLOCK):   # ... by NC panels: in L2
                    chunk_hi = min(panel_hi, chunk_lo + PANELS_BLOCK)
                    for k_lo in range(0, K_pad, KC):                       # every K block into it
                        kernel(_data_pointer(packed_a[g]), _data_pointer(packed_b[g]), _data_pointer(c[g]),
                               K_pad, N_pad, block_lo, block_hi, chunk_lo, chunk_hi, k_lo,
                               min(K_pad, k_lo + KC), 1 if k_lo > 0 else 0)


_scratch = threading.local()   # this thread's buffers for one product's temporaries


def _scratch_array(name, shape, dtype):
    """An uninitialised ``shape`` array in this thread's buffer ``name``, grown when too small and
    kept: a product's packed operands (and a padded C) are its own temporaries, and fresh memory
    that large costs a page fault per 4 KiB on every call (kernels/scratch.py: up to ~0.5 s per
    154 MB in this project's VM; the 124M model's step packs about 0.7 GB)."""
    size = int(numpy.prod(shape)) * numpy.dtype(dtype).itemsize
    buffer = getattr(_scratch, name, None)
    if buffer is None or buffer.size < size:
        buffer = numpy.empty(size, dtype=numpy.uint8)
        setattr(_scratch, name, buffer)
    return buffer[:size].view(dtype).reshape(shape)


def packed_product(kernel, a, b, out=None):
    """``a @ b`` (float32 stacks (..., M, K) @ (..., K, N), equal leading axes) with both
    operands rounded to bf16 and packed, the products accumulated in float32 by ``kernel``
    (``compiled_kernel(path)`` or ``twin_kernel(path)``), into ``out`` when given."""
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    lead = a.shape[:-2]
    a3, b3 = a.reshape((-1, M, K)), b.reshape((-1, K, N))
    G = a3.shape[0]
    M_pad, K_pad, N_pad = padded(M), padded(K), padded(N)
    packed_a = _scratch_array("a", (G, M_pad, K_pad), numpy.uint16)
    packed_b = _scratch_array("b", (G, N_pad // TILE, K_pad // 2, 2 * TILE), numpy.uint16)
    pack_a(a3, packed_a)
    pack_b_vnni(b3, packed_b)
    c_is_result = out is None and (M, N) == (M_pad, N_pad)      # no padding to drop: C is what is returned
    c = (numpy.empty((G, M_pad, N_pad), dtype=numpy.float32) if c_is_result
         else _scratch_array("c", (G, M_pad, N_pad), numpy.float32))
    _drive(kernel, packed_a, packed_b, c, numba.get_num_threads())
    result = c[:, :M, :N].reshape(lead + (M, N))
    if c_is_result:
        return result
    if out is None:
        return result.copy()                                    # C is this thread's scratch: never hand it out
    out[...] = result
    return out
