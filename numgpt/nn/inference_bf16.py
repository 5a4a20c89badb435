"""``--precision bf16-true``: inference with the weights kept as bf16.

bf16-true stores every weight matrix (the linear layers' and the
embeddings', a tied head once) as bf16 bits, uint16 (numgpt/bf16.py): half
the memory of float32, and half the bytes a decode step reads, which is what
bounds it (a one-token step reads every weight once; GPT-2's tied
50257 x 768 head alone is 154 MB in float32, 77 MB in bf16). What stays
float32: the activations, the KV cache, the linear layers' biases and the
LayerNorm / RMSNorm weights (a few KB, and the statistics are float32 as in
PyTorch's bf16 inference), and every sum.

The arithmetic is that of the float32 model whose weights were rounded to
bf16 (``round_to_bf16``): a bf16 weight widens to float32 exactly, so
``linear_bf16`` computes ``x @ round_to_bf16(W)^T + b`` up to float32
summation order, and an embedding row is the rounded row.

- ``to_bf16_true(model)`` converts a model in place (its Linear and
  Embedding modules become ``BF16Linear`` / ``BF16Embedding``), one layer at a
  time, so the float32 and bf16 copies of the whole model never coexist.
- The products: kernels/bf16_weights.py in kernel mode ``numba`` (a fused
  widening decode loop; BLAS on widened blocks for prefill),
  ``linear_bf16_reference`` (widen, then numpy.matmul) in mode ``numpy``.

Inference only: the converted modules record no gradient, and the model is
left in eval mode with its remaining (float32) parameters frozen.
"""
import numpy

from numgpt import backend
from numgpt.autograd import Tensor
from numgpt.bf16 import from_bf16_bits, to_bf16_bits
from numgpt.device import is_host
from numgpt.errors import UsageError
from numgpt.nn.layers import Embedding, Linear, Module, Parameter
from numgpt.ops.embedding import check_indices

PRECISIONS = ("32-true", "bf16-true")


def linear_bf16_reference(x, w_bits, bias=None):
    """x (..., IN) float32 @ widen(w_bits (OUT, IN))^T (+ bias (OUT,)) -> (..., OUT) float32."""
    out = numpy.matmul(x, from_bf16_bits(w_bits).T)
    return out if bias is None else out + bias


def linear_bf16(x, w_bits, bias=None):
    """``linear_bf16_reference`` or, in kernel mode numba, its twin (kernels/bf16_weights.py)."""
    if backend.get_kernel_mode() == "numba":
        from numgpt.kernels.bf16_weights import linear_bf16 as kernel   # numba: loaded in kernel mode numba only
        return kernel(x, w_bits, bias)
    return linear_bf16_reference(x, w_bits, bias)


class BF16Weight:
    """A weight matrix as bf16 bits (``bits``, uint16), shared by the modules that tie it."""

    __slots__ = ("bits",)

    def __init__(self, bits):
        self.bits = bits

    @property
    def nbytes(self):
        return self.bits.nbytes


class BF16Linear(Module):
    """Linear with its weight as bf16 bits (PyTorch's (OUT, IN) layout) and its bias float32."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight_bf16 = weight                                   # BF16Weight (OUT, IN)
        self.bias = bias                                            # Parameter (OUT,) float32, or None
        self.out_features, self.in_features = weight.bits.shape

    def forward(self, x):                                           # (..., IN) -> (..., OUT)
        bias = None if self.bias is None else self.bias.data
        return Tensor(linear_bf16(x.data, self.weight_bf16.bits, bias))

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=bf16"


class BF16Embedding(Module):
    """Embedding with its table as bf16 bits; the gathered rows are widened to float32."""

    def __init__(self, weight):
        super().__init__()
        self.weight_bf16 = weight                                   # BF16Weight (V, C)
        self.num_embeddings, self.embedding_dim = weight.bits.shape

    def forward(self, idx):                                         # (...) -> (..., C)
        idx = numpy.asarray(idx.data if isinstance(idx, Tensor) else idx)
        check_indices(idx, self.num_embeddings)
        return Tensor(from_bf16_bits(self.weight_bf16.bits[idx]))

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, weight=bf16"


def _bf16_weight(parameter, converted):
    """The BF16Weight of ``parameter`` (one per parameter, so a tied weight stays shared)."""
    if id(parameter) not in converted:
        converted[id(parameter)] = BF16Weight(to_bf16_bits(parameter.data))
    return converted[id(parameter)]


def _replace_child(parent, name, module):
    """parent.<name> = module, keeping its place in the parent's order (Sequential runs in that
    order; Module.__setattr__ would move a re-registered name to the end)."""
    parent._modules[name] = module
    object.__setattr__(parent, name, module)


def to_bf16_true(model):
    """Convert ``model`` (on the host) in place to bf16-true and return it, in eval mode, every
    remaining parameter frozen. Each Linear and Embedding is replaced by its bf16 module as it is
    reached, so the float32 weights are freed layer by layer."""
    if not all(is_host(parameter.data) for _, parameter in model.named_parameters()):
        raise UsageError("--precision bf16-true runs on the CPU: give --device cpu")
    converted = {}
    for _, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, Linear):
                _replace_child(parent, name, BF16Linear(_bf16_weight(child.weight, converted), child.bias))
            elif isinstance(child, Embedding):
                _replace_child(parent, name, BF16Embedding(_bf16_weight(child.weight, converted)))
    for _, parameter in model.named_parameters():
        parameter.requires_grad = False
    return model.eval()


def bf16_weight_arrays(model):
    """{name: uint16 bits} of a bf16-true model's weight matrices, named as its parameters were
    ('model.layers.0.mlp.up_proj.weight'); a tied matrix once, under its first name."""
    arrays, seen = {}, set()
    for prefix, module in model.named_modules():
        weight = getattr(module, "weight_bf16", None)
        if weight is not None and id(weight) not in seen:
            seen.add(id(weight))
            arrays[f"{prefix}weight"] = weight.bits
    return arrays


def weight_nbytes(model):
    """Bytes of the model's weights: float parameters plus bf16 matrices, each shared one once."""
    seen, total = set(), 0
    for _, module in model.named_modules():
        for value in list(module._parameters.values()) + [getattr(module, "weight_bf16", None)]:
            if value is not None and id(value) not in seen:
                seen.add(id(value))
                total += value.data.nbytes if isinstance(value, Parameter) else value.nbytes
    return total
