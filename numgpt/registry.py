"""What runs when you call an op: the one answer, in this file.

Each op in ``numgpt/ops`` is a pair of reference functions, ``<op>_forward``
and ``<op>_backward``: plain NumPy, what a learner reads and what
``numgpt gradcheck`` checks. An op's tape wrapper (``ops.linear``,
``ops.layer_norm``, ...) asks ``resolve(forward, backward)`` which pair to
run, and the answer is, in this order:

1. the op's reference forward with a learner's backward, while
   ``use_backward(op, fn)`` is in force (the reference forward, so that the
   learner's backward receives the cache the reference backward would);
2. for arrays on the CPU in kernel mode ``numba`` (``backend.set_kernel_mode``;
   ``NUMGPT_KERNELS``), the twins registered for the reference functions in
   ``numba_twins()`` below, where one is registered (CuPy arrays on a CUDA
   device run the references, which take their array module from the inputs);
3. the reference functions themselves.

A twin takes the same arguments, returns the same values within float32
round-off (tests/test_kernels.py) and the same cache type, and carries the
speed measures the reference leaves out: numgpt's matmul kernel, one pass
over memory where NumPy makes temporaries, reused large buffers, gradients
written in place. Twins are registered by the reference function object,
so that ``grep`` finds every use.

One exception to "the same cache type": attention's flash twin
(kernels/attention.py) keeps the output and the row log-sum-exp instead of
the (T, T) weights, in a ``FlashAttentionCache``. Its forward and backward
are therefore used as a pair, never one with the other's reference: that is
what ``resolve`` answers (both twins, or both references, or the reference
forward with a learner's backward), and the choice is made once, at the
forward, for the backward of the same call.

Fused ops (numgpt/ops/fused.py: bias + GELU, dropout + residual add, and
the residual add with its LayerNorm) are compositions of the ops above. Their
reference is the ops one by one; ``fused(forward, parts, data)`` answers
whether the fused kernel pair runs instead: in kernel mode ``numba``, on the
host, unless a learner's backward is in force for one of the ``parts`` or
``op_by_op()`` is. When
it answers None, the tape wrapper calls the parts one by one.

``op_pairs()`` names every op with a reference pair (for ``use_backward``,
``numgpt gradcheck --list`` and ``numgpt train --backward``). The tables are
built on first use: the op modules import this one.
"""
import contextlib
import functools
from typing import Callable, NamedTuple

from numgpt import backend
from numgpt.device import is_host
from numgpt.errors import UsageError


class OpPair(NamedTuple):
    forward: Callable
    backward: Callable


@functools.lru_cache(maxsize=None)
def op_pairs():
    """op name -> its reference (forward, backward)."""
    # the documented cycle: the ops ask the registry, which lists their reference pairs
    from numgpt.ops.attention import attention_backward, attention_forward
    from numgpt.ops.cross_entropy import cross_entropy_backward, cross_entropy_forward
    from numgpt.ops.dropout import dropout_backward, dropout_forward
    from numgpt.ops.elementwise import add_backward, add_forward, mul_backward, mul_forward
    from numgpt.ops.embedding import embedding_backward, embedding_forward
    from numgpt.ops.gelu import gelu_backward, gelu_forward
    from numgpt.ops.layer_norm import layer_norm_backward, layer_norm_forward
    from numgpt.ops.linear import linear_backward, linear_forward
    from numgpt.ops.rms_norm import rms_norm_backward, rms_norm_forward
    from numgpt.ops.rope import rope_backward, rope_forward
    from numgpt.ops.swiglu import (swiglu_backward, swiglu_forward, swiglu_linear_backward,
                                   swiglu_linear_forward)
    return {
        "linear": OpPair(linear_forward, linear_backward),
        "embedding": OpPair(embedding_forward, embedding_backward),
        "layer_norm": OpPair(layer_norm_forward, layer_norm_backward),
        "gelu": OpPair(gelu_forward, gelu_backward),
        "dropout": OpPair(dropout_forward, dropout_backward),
        "attention": OpPair(attention_forward, attention_backward),
        "cross_entropy": OpPair(cross_entropy_forward, cross_entropy_backward),
        "add": OpPair(add_forward, add_backward),
        "mul": OpPair(mul_forward, mul_backward),
        "rms_norm": OpPair(rms_norm_forward, rms_norm_backward),
        "rope": OpPair(rope_forward, rope_backward),
        "swiglu": OpPair(swiglu_forward, swiglu_backward),
        "swiglu_linear": OpPair(swiglu_linear_forward, swiglu_linear_backward),
    }


@functools.lru_cache(maxsize=None)
def numba_twins():
    """reference function -> its numba twin (imported, not compiled, on the first call)."""
    # numba's kernels: heavy, and loaded only in kernel mode numba; AdamW's update: optim asks the registry
    from numgpt import kernels
    from numgpt.kernels import swiglu as swiglu_twins
    from numgpt.optim import adamw_update, sum_of_squares
    ops = op_pairs()
    return {
        ops["linear"].forward: kernels.linear.linear_forward,
        ops["linear"].backward: kernels.linear.linear_backward,
        ops["attention"].forward: kernels.attention.attention_forward,
        ops["attention"].backward: kernels.attention.attention_backward,
        ops["layer_norm"].forward: kernels.layer_norm.layer_norm_forward,
        ops["layer_norm"].backward: kernels.layer_norm.layer_norm_backward,
        ops["gelu"].forward: kernels.gelu.gelu_forward,
        ops["gelu"].backward: kernels.gelu.gelu_backward,
        ops["cross_entropy"].forward: kernels.cross_entropy.cross_entropy_forward,
        ops["cross_entropy"].backward: kernels.cross_entropy.cross_entropy_backward,
        ops["embedding"].backward: kernels.embedding.embedding_backward,
        ops["swiglu_linear"].forward: swiglu_twins.swiglu_linear_forward,
        ops["swiglu_linear"].backward: swiglu_twins.swiglu_linear_backward,
        adamw_update: kernels.adamw.adamw_update,
        sum_of_squares: kernels.adamw.sum_of_squares,
    }


@functools.lru_cache(maxsize=None)
def fused_twins():
    """fused op's reference forward -> its numba twins, as an OpPair (forward, backward)."""
    # numba's kernels (heavy, kernel mode numba only) and the fused references (the documented cycle)
    from numgpt.kernels import fused as twins
    from numgpt.ops import fused as references
    return {
        references.linear_gelu_forward: OpPair(twins.linear_gelu_forward, twins.linear_gelu_backward),
        references.dropout_add_forward: OpPair(twins.dropout_add_forward, twins.dropout_add_backward),
        references.dropout_add_layer_norm_forward: OpPair(twins.dropout_add_layer_norm_forward,
                                                          twins.dropout_add_layer_norm_backward),
    }


_learner_backwards = {}   # reference backward -> a learner's function, while use_backward is in force


def implementation(reference, data=None):
    """The function that runs for one reference function on ``data`` (an input
    array: its device decides too; see the module docstring)."""
    learner = _learner_backwards.get(reference)
    if learner is not None:
        return learner
    if backend.get_kernel_mode() == "numba" and (data is None or is_host(data)):
        return numba_twins().get(reference, reference)
    return reference


_unfused = False          # True while op_by_op() is in force


def fused(forward, parts, data):
    """The numba twins (an OpPair) of the fused op whose reference forward is
    ``forward``, when they run for inputs like ``data``; None when the op is to
    run as its ``parts`` (op names), one by one (see the module docstring)."""
    if _unfused or backend.get_kernel_mode() != "numba" or not is_host(data):
        return None
    if any(op_pair(part).backward in _learner_backwards for part in parts):
        return None
    return fused_twins()[forward]


def resolve(forward, backward, data=None):
    """(forward, backward) to run for the op whose reference pair is ``forward, backward``,
    on inputs like ``data``."""
    if backward in _learner_backwards:
        return forward, _learner_backwards[backward]
    return implementation(forward, data), implementation(backward, data)


def which(op):
    """'reference', 'numba twin' or 'yours' (use_backward): what runs for ``op``'s forward and backward."""
    pair = op_pair(op)
    run = resolve(*pair)

    def name(reference, running):
        if running is reference:
            return "reference"
        return "yours" if _learner_backwards.get(reference) is running else "numba twin"
    return name(pair.forward, run[0]), name(pair.backward, run[1])


def op_pair(op):
    """The reference pair of the op named ``op``; UsageError naming the ops otherwise."""
    pairs = op_pairs()
    if op not in pairs:
        raise UsageError(f"unknown op {op!r}: expected one of {', '.join(pairs)}")
    return pairs[op]


@contextlib.contextmanager
def op_by_op():
    """Within the block, every fused op runs as its parts, one by one (their numba
    twins in kernel mode numba): to compare, or to see each part in the graph."""
    global _unfused
    previous, _unfused = _unfused, True
    try:
        yield
    finally:
        _unfused = previous


@contextlib.contextmanager
def use_backward(op, fn):
    """Within the block, ``op`` runs its reference forward and ``fn`` as its backward
    (``fn(dout, cache)``, the signature of the op's ``<op>_backward``): the model
    trains with your gradient."""
    backward = op_pair(op).backward
    if not callable(fn):
        raise UsageError(f"use_backward({op!r}, ...): {fn!r} is not a function")
    previous = _learner_backwards.get(backward)
    _learner_backwards[backward] = fn
    try:
        yield fn
    finally:
        if previous is None:
            del _learner_backwards[backward]
        else:
            _learner_backwards[backward] = previous
