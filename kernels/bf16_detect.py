"""Which bf16 matrix path this process runs, and why: AMX tiles, AVX512_BF16,
or the float32 emulation.

The path follows the host CPU's features as LLVM reports them
(``llvmlite.binding.get_host_cpu_features()``, the same table numba compiles
for):

- ``amx``: ``amx-tile`` and ``amx-bf16`` (TDPBF16PS on 16 x 16 float32 tiles;
  Intel Sapphire Rapids and later). On Linux a process must also ask the
  kernel for the tile state first: ``arch_prctl(ARCH_REQ_XCOMP_PERM,
  XFEATURE_XTILEDATA)`` (Linux 5.16+; the kernel then saves the 8 KiB of
  tile data on context switches). It is asked once per process; a refusal
  (an older kernel, a sandbox filtering the call) falls back to the next
  path, with the kernel's error as the reason.
- ``avx512_bf16``: ``avx512bf16`` with ``avx512f``, ``avx512bw`` and
  ``avx512vl`` (VDPBF16PS on 512-bit registers; Intel Cooper Lake and
  Sapphire Rapids, AMD Zen 4).
- ``emulated``: anything else; the operands are rounded to bf16 and the
  product runs in float32 (the same numbers, at float32's speed).

``NUMGPT_BF16=amx|avx512|emulate`` forces a path (tests use it to run every
path the machine has); forcing a path the CPU lacks is a UsageError. This
module needs only llvmlite and ctypes, so ``numgpt info`` can report the
path in either kernel mode, and nothing here compiles a kernel.
"""
import ctypes
import ctypes.util
import functools
import os
import sys
from typing import NamedTuple

import llvmlite.binding

from numgpt.errors import UsageError

ENV_VAR = "NUMGPT_BF16"
FORCED = {"amx": "amx", "avx512": "avx512_bf16", "emulate": "emulated"}   # NUMGPT_BF16 value -> path name

AMX_FEATURES = ("amx-tile", "amx-bf16")
AVX512_BF16_FEATURES = ("avx512f", "avx512bw", "avx512vl", "avx512bf16")

ARCH_REQ_XCOMP_PERM = 0x1023      # arch_prctl code: request permission for an extended state component
XFEATURE_XTILEDATA = 18           # the AMX tile data component (XSAVE feature 18)
SYS_ARCH_PRCTL = 158              # the arch_prctl system call's number on x86-64 Linux


class BF16Path(NamedTuple):
    name: str       # 'amx', 'avx512_bf16' or 'emulated'
    reason: str     # one clause: why this path, in words


def host_features():
    """The set of CPU features LLVM sees on this host (names such as 'avx512bf16')."""
    return {name for name, present in llvmlite.binding.get_host_cpu_features().items() if present}


def _missing(features, wanted):
    return [name for name in wanted if name not in features]


def _request_amx_permission():
    """None when the kernel grants this process the AMX tile state, else the reason it does not.
    Linux only; elsewhere (no arch_prctl) the tiles are assumed usable once the CPU reports them."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    status = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_REQ_XCOMP_PERM),
                          ctypes.c_ulong(XFEATURE_XTILEDATA))
    if status == 0:
        return None
    errno = ctypes.get_errno()
    return (f"arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) refused by the kernel "
            f"({os.strerror(errno)}, errno {errno}; Linux 5.16+ grants it)")


def choose_path(features, forced=None, request_amx=_request_amx_permission):
    """The BF16Path for a CPU with ``features`` (a set of LLVM feature names), with
    ``forced`` the NUMGPT_BF16 value or None; ``request_amx`` asks the OS for the tiles
    (None when granted, else the reason). Raises UsageError for a forced path the CPU lacks."""
    amx_missing = _missing(features, AMX_FEATURES)
    avx512_missing = _missing(features, AVX512_BF16_FEATURES)
    if forced is not None:
        if forced not in FORCED:
            raise UsageError(f"{ENV_VAR}={forced!r}: expected one of {', '.join(FORCED)}")
        name = FORCED[forced]
        lacking = {"amx": amx_missing, "avx512_bf16": avx512_missing, "emulated": []}[name]
        if lacking:
            raise UsageError(f"{ENV_VAR}={forced}: this CPU lacks {', '.join(lacking)} "
                             f"(it has {_bf16_features_named(features)})")
        if name == "amx":
            refusal = request_amx()
            if refusal is not None:
                raise UsageError(f"{ENV_VAR}={forced}: the CPU has AMX but {refusal}")
        return BF16Path(name, f"forced by {ENV_VAR}={forced}")
    amx_refusal = None
    if not amx_missing:
        amx_refusal = request_amx()
        if amx_refusal is None:
            return BF16Path("amx", "the CPU has amx-tile and amx-bf16, and the kernel granted the tile state")
    if not avx512_missing:
        why = f"AMX {'unusable: ' + amx_refusal if amx_refusal else 'absent'}"
        return BF16Path("avx512_bf16", f"the CPU has avx512bf16 ({why})")
    if amx_refusal:
        return BF16Path("emulated", f"AMX unusable: {amx_refusal}; no avx512bf16")
    return BF16Path("emulated", f"the CPU has neither amx-bf16 nor avx512bf16; it has "
                                f"{_bf16_features_named(features)}")


def _bf16_features_named(features):
    """'avx2, avx512f' : the vector features of interest this CPU has, for messages."""
    interesting = ("avx2",) + AVX512_BF16_FEATURES + AMX_FEATURES
    present = [name for name in interesting if name in features]
    return ", ".join(present) if present else "none of avx2, avx512*, amx*"


@functools.cache
def bf16_path():
    """The bf16 path of this process (decided once: NUMGPT_BF16, else the host CPU)."""
    return choose_path(host_features(), os.environ.get(ENV_VAR) or None)
