"""Precision modes: which arithmetic the matrix products use.

The modes are named as Lightning and litgpt name them:

- ``32-true`` (the default): everything in float32, the seed's arithmetic.
- ``bf16-mixed``: training with float32 master weights, activations,
  gradients, AdamW moments and loss; the matrix products take bf16-rounded
  operands and accumulate in float32 (``numgpt.bf16.matmul_bf16``), as a
  CPU's bf16 matrix units (AMX, AVX512_BF16) compute them. In Python:
  ``with numgpt.autocast("cpu", dtype="bfloat16"):`` around the forward and
  the loss, as ``torch.autocast`` is used.
- ``bf16-true``: inference with the weights stored in bf16 (generate, eval);
  not a training mode.

Which ops run in bf16 under autocast follows PyTorch's CPU autocast lists:
the products of linear (forward, and both backward products dx and dW),
matmul and attention (q k^T, P v and their backward products) take bf16
operands; the bias and its gradient, LayerNorm, RMSNorm, GELU, SwiGLU's
gate, softmax and its statistics, cross-entropy and AdamW stay float32.
An op decides at its forward, from ``autocast_active(x)``, and keeps the
decision in its cache for its backward, as PyTorch's autograd does. Only
float32 host arrays are autocast (float64, as in gradient checks, and CuPy
arrays are left as they are, as torch.autocast leaves float64).

The weight cache. A weight is rounded to bf16 once per optimizer step, not
once per use (``autocast_weight``): the rounded copy serves the forward and
the backward products of every micro-batch of a gradient accumulation (in
kernel mode numba on a CPU with a bf16 matrix unit the copy is the bf16 bits,
uint16, as PyTorch's cache keeps bf16 weights: half the memory). It
is dropped when the weights change: numgpt's optimizer step and
``Module.load_state_dict`` call ``clear_autocast_cache()``, and a weight
whose ``.data`` was replaced by another array is rounded again. Code that
writes into ``.data`` in place by other means calls ``clear_autocast_cache()``
itself (PyTorch's ``torch.clear_autocast_cache``).
"""
import operator
import sys
import weakref

import numpy

from numgpt import backend
from numgpt.bf16 import matmul_bf16, round_to_bf16
from numgpt.errors import UsageError

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
DEFAULT_PRECISION = "32-true"
TRAINING_PRECISIONS = ("32-true", "bf16-mixed")
BF16_NAMES = ("bfloat16", "bf16")


class autocast:
    """``with numgpt.autocast("cpu", dtype="bfloat16"):`` the matrix products of the ops
    in the block take bf16 operands (see the module docstring); ``enabled=False`` turns it
    off within an enclosing block. Nests as torch.autocast: the state before the block is
    restored after it."""

    def __init__(self, device_type="cpu", dtype="bfloat16", enabled=True):
        if device_type != "cpu":
            raise UsageError(f"autocast(device_type={device_type!r}): numgpt's autocast is for the CPU "
                             f"(device_type='cpu')")
        if dtype not in BF16_NAMES:
            raise UsageError(f"autocast(dtype={dtype!r}): expected 'bfloat16' (or 'bf16'), the one "
                             f"lower precision numgpt computes in")
        if not isinstance(enabled, bool):
            raise UsageError(f"autocast(enabled={enabled!r}): expected True or False")
        self.enabled = enabled
        self._previous = []

    def __enter__(self):
        global _enabled
        self._previous.append(_enabled)
        _enabled = self.enabled
        return self

    def __exit__(self, *exc):
        global _enabled
        _enabled = self._previous.pop()
        return False


_enabled = False


def is_autocast_enabled():
    """True inside ``numgpt.autocast()`` (and not inside an ``enabled=False`` one)."""
    return _enabled


def autocast_active(data):
    """Whether an op on ``data`` runs its products in bf16 now: autocast is on and
    ``data`` is a float32 host array."""
    return _enabled and isinstance(data, numpy.ndarray) and data.dtype == numpy.float32


def reference_matmul(bf16):
    """The product of the NumPy reference ops: bf16 operands with float32 products, or ``@``."""
    return matmul_bf16 if bf16 else operator.matmul


def precision_context(precision):
    """The autocast block a run in ``precision`` trains in (on for bf16-mixed, else off)."""
    return autocast(enabled=precision == "bf16-mixed")


# ---------------------------------------------------------------- the weight cache
class _WeightCache:
    """weight tensor -> its bf16-rounded copy, while the weight's array is the one rounded
    and no weight changed since (``generation``). ``roundings`` counts the copies made."""

    def __init__(self):
        self.copies = weakref.WeakKeyDictionary()   # Tensor -> (its .data then, generation, rounded copy)
        self.spares = {}                            # shape -> the last generation's copies, to round into
        self.generation = 0
        self.roundings = 0


_weights = _WeightCache()


def autocast_weight(weight):
    """The array a product uses for the weight tensor ``weight``: its bf16 copy (made once per
    optimizer step) while ``autocast_active``, else ``weight.data``. The copy is the rounded
    float32, or in kernel mode numba on a CPU with a bf16 matrix unit the bf16 bits (uint16) that
    the kernels' products read (``_rounded``): an op passes it to its product_of(bf16) only."""
    data = weight.data
    if not autocast_active(data):
        return data
    entry = _weights.copies.get(weight)
    if entry is not None and entry[0] is data and entry[1] == _weights.generation:
        return entry[2]
    rounded = _rounded(data)
    _weights.roundings += 1
    _weights.copies[weight] = (data, _weights.generation, rounded)
    return rounded


def _rounded(data):
    """``data``'s bf16 copy. In kernel mode numba the kernels make it (numgpt.kernels.bf16's
    ``weight_copy``: on a CPU with a bf16 matrix unit the weight's bf16 bits, uint16, which those
    products take as they are; else the rounded float32), in one parallel pass (the NumPy
    reference took 1.24 s per step for the 124M model's weights on Zen 4), into a copy of the
    last generation that nothing holds any more when there is one of this shape: fresh memory
    costs a page fault per 4 KiB (about 0.2 s per step for the 124M model in this project's VM).
    In kernel mode numpy the reference's rounded float32."""
    if backend.get_kernel_mode() != "numba":
        return round_to_bf16(data)
    from numgpt.kernels.bf16 import weight_copy   # the kernels' module: kernel mode numba only
    spares = _weights.spares.get(data.shape, [])
    while spares:
        spare = spares.pop()
        if sys.getrefcount(spare) == 2:       # ``spare`` and getrefcount's argument: no graph holds it
            return weight_copy(data, spare)
    return weight_copy(data)


def clear_autocast_cache():
    """Drop every cached bf16 weight: the weights changed (an optimizer step, load_state_dict).
    In kernel mode numba their arrays are kept as spares for the next generation's copies, until
    the next clear."""
    _weights.generation += 1
    _weights.spares = {}
    if backend.get_kernel_mode() == "numba":       # only the kernels round into a spare (``_rounded``)
        for _, _, copy in _weights.copies.values():
            _weights.spares.setdefault(copy.shape, []).append(copy)
    _weights.copies.clear()


def weight_roundings():
    """How many weights the cache has rounded so far in this process (to check that it is hit)."""
    return _weights.roundings


# ---------------------------------------------------------------- the bf16 path of this CPU
def bf16_path():
    """The bf16 product path this process runs: 'amx', 'avx512_bf16' or 'emulated'. The NumPy
    kernel mode runs the reference products (emulated); kernel mode numba asks the kernels'
    detection (numgpt.kernels.bf16_detect: the CPU's features, or NUMGPT_BF16)."""
    if backend.get_kernel_mode() != "numba":
        return "emulated"
    from numgpt.kernels.bf16_detect import bf16_path as detected   # the kernels' module: kernel mode numba only
    return detected().name


def emulation_notice():
    """The one line a bf16-mixed run prints where the products are emulated; None where the
    CPU has a bf16 matrix unit."""
    if bf16_path() != "emulated":
        return None
    return ("bf16-mixed runs emulated on this CPU (it has neither AMX nor AVX512_BF16): bf16-rounded operands "
            "on float32 products, the same numerics, not faster than 32-true")
