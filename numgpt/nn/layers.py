"""Modules, as PyTorch users know them: ``Module`` with parameters, state_dict,
train/eval; the generic layers ``Linear``, ``Embedding``, ``LayerNorm``,
``Dropout``, ``GELU`` and ``Sequential``. Initialisation draws from the same
distributions as PyTorch's defaults, from numgpt's seeded generator.
"""
import math
from typing import NamedTuple

import numpy

from numgpt import backend, ops
from numgpt.autograd import Tensor
from numgpt.device import device_of, is_host, like, parse_device, to_device
from numgpt.errors import NumgptError
from numgpt.ops.layer_norm import EPS as LAYER_NORM_EPS
from numgpt.precision import clear_autocast_cache


class Parameter(Tensor):
    """A tensor that a Module owns and an optimizer updates."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


def _shape(value):
    return tuple(value.shape) if hasattr(value, "shape") else tuple(numpy.shape(value))


class StateDictError(NumgptError, ValueError):
    """A state_dict that does not fit the model; the message lists every problem."""


class IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


def uniform_(shape, bound):
    """U(-bound, bound) in the default dtype."""
    dtype = backend.get_default_dtype()
    return (backend.get_generator().random(shape, dtype=dtype) * dtype.type(2 * bound) - dtype.type(bound))


def normal_(shape):
    """N(0, 1) in the default dtype."""
    return backend.get_generator().standard_normal(shape, dtype=backend.get_default_dtype())


class Module:
    """Base class: attributes that are Parameters or Modules are registered in order."""

    # state_dict keys of the PyTorch reference that this module has no use for (buffers)
    ignored_state_keys = ()

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() before assigning "
                                 f"{name!r}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, module in self._modules.items():
            yield from module.named_modules(f"{prefix}{name}.")

    def modules(self):
        return [module for _, module in self.named_modules()]

    def children(self):
        return list(self._modules.values())

    def _named_parameters_all(self):
        """Every (name, parameter), a shared parameter once per name."""
        for prefix, module in self.named_modules():
            for name, param in module._parameters.items():
                yield prefix + name, param

    def named_parameters(self):
        """(name, parameter) pairs; a parameter shared by two modules is listed once."""
        seen = set()
        result = []
        for name, param in self._named_parameters_all():
            if id(param) not in seen:
                seen.add(id(param))
                result.append((name, param))
        return result

    def parameters(self):
        return [param for _, param in self.named_parameters()]

    def zero_grad(self):
        for param in self.parameters():
            param.grad = None

    # ------------------------------------------------------------ modes
    def train(self, mode=True):
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Move the parameters (and their gradients) to ``device`` ("cpu", "cuda", "cuda:N"),
        and cast them to ``dtype`` (float32 or float64), in place; returns the module, as torch.
        A parameter shared by two modules (a tied weight) stays one parameter."""
        if dtype is not None:
            dtype = numpy.dtype(dtype)
            if dtype not in backend.FLOAT_DTYPES:
                raise ValueError(f"parameters can be float32 or float64, not {dtype}")
        target = None if device is None else parse_device(device)
        for param in self.parameters():
            if target is not None:
                param.data = to_device(param.data, target)
                param.grad = None if param.grad is None else to_device(param.grad, target)
            if dtype is not None and param.data.dtype != dtype:
                param.data = param.data.astype(dtype)
                param.grad = None
        return self

    @property
    def device(self):
        """The device of the parameters (of the first one; ``to`` keeps them together)."""
        params = self.parameters()
        return device_of(params[0].data) if params else parse_device("cpu")

    # ------------------------------------------------------------ state
    def state_dict(self):
        """name -> array, with the names of the PyTorch reference (a tied weight under both names)."""
        return {name: param.data for name, param in self._named_parameters_all()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters in place (cast to their dtype).

        Every missing, unexpected and misshapen key is reported in one
        StateDictError; with strict=False only misshapen keys raise, and the
        missing and unexpected keys are returned.
        """
        own = dict(self._named_parameters_all())
        ignored = {prefix + key for prefix, module in self.named_modules() for key in module.ignored_state_keys}
        given = {key: value for key, value in state_dict.items() if key not in ignored}
        missing = [key for key in own if key not in given]
        unexpected = [key for key in given if key not in own]
        misshapen = [f"{key}: expected {own[key].shape}, got {_shape(given[key])}"
                     for key in own if key in given and _shape(given[key]) != own[key].shape]
        problems = [f"misshapen: {m}" for m in misshapen]
        if strict:
            problems += [f"missing: {key}" for key in missing] + [f"unexpected: {key}" for key in unexpected]
        if problems:
            raise StateDictError(f"state_dict does not fit {type(self).__name__} "
                                 f"({len(problems)} problems):\n  " + "\n  ".join(problems))
        for key, param in own.items():
            if key in given:                                   # one tensor at a time, to the parameter's device
                value = given[key]
                param.data[...] = like(value if not is_host(value) else numpy.asarray(value), param.data)
        clear_autocast_cache()                                 # the weights' bf16 copies are stale now
        return IncompatibleKeys(missing, unexpected)

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for name, module in self._modules.items():
            lines.append("  (" + name + "): " + repr(module).replace("\n", "\n  "))
        return "\n".join(lines) + ")" if self._modules else f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return ""


class Linear(Module):
    """y = x @ W.T + b, W (out_features, in_features); init U(+-1/sqrt(in_features))."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(uniform_((out_features, in_features), bound))
        self.bias = Parameter(uniform_((out_features,), bound)) if bias else None

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """Rows of a (num_embeddings, embedding_dim) table; init N(0, 1)."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(normal_((num_embeddings, embedding_dim)))

    def forward(self, idx):
        return ops.embedding(idx, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """The seed's LayerNorm: parameters ``scale`` (ones) and ``shift`` (zeros), eps 1e-5."""

    def __init__(self, emb_dim, eps=LAYER_NORM_EPS):
        super().__init__()
        self.eps = eps
        dtype = backend.get_default_dtype()
        self.scale = Parameter(numpy.ones(emb_dim, dtype=dtype))
        self.shift = Parameter(numpy.zeros(emb_dim, dtype=dtype))

    def forward(self, x):
        return ops.layer_norm(x, self.scale, self.shift, self.eps)

    def extra_repr(self):
        return f"{self.scale.shape[0]}, eps={self.eps}"


class Dropout(Module):
    """Inverted dropout while training; the identity in eval mode."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        return ops.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    """GELU, tanh approximation."""

    def forward(self, x):
        return ops.gelu(x)


class Sequential(Module):
    """Modules applied in order, registered as '0', '1', ..."""

    def __init__(self, *modules):
        super().__init__()
        for i, module in enumerate(modules):
            setattr(self, str(i), module)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for module in self:
            x = module(x)
        return x
