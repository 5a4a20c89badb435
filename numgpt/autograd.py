"""A small reverse-mode autograd over backend arrays.

A ``Tensor`` wraps one array (``.data``). Each op in ``numgpt.ops`` is a pair
of pure functions, ``<op>_forward(...) -> (out, cache)`` and
``<op>_backward(dout, cache) -> grads``; its tape wrapper calls the forward and
hands ``record`` the output, the input tensors, a closure over the backward
and the op's name. Every recorded tensor is a node of the graph: its
``_parents``, its ``_backward`` and its ``_op`` name (``numgpt.graph`` draws
them).

``Tensor.backward`` is the chain rule, walked once over the graph:

    1. order the nodes so that every node comes after all of its parents
       (a topological sort), and start from d(loss)/d(loss) = 1;
    2. walk that order backwards: a node's gradient is complete once every
       node that used it has run (they all come later in the order), so
       it is handed to the node's backward, which returns one gradient per
       parent;
    3. a tensor used by several ops (a residual stream, a tied weight, the
       input of the query, key and value projections) receives one gradient
       from each use, and its gradient is their sum:
           y = f(x), z = g(x)  ->  dL/dx = dL/dy dy/dx + dL/dz dz/dx
       (the "fan-out sum"; it is what makes residual connections pass the
       gradient straight through: d(x + f(x))/dx = 1 + df/dx);
    4. leaves (parameters, inputs made with ``requires_grad=True``) add
       their gradient into ``.grad``, accumulating across backward calls
       as in PyTorch, as soon as the walk reaches them (every use of a leaf
       comes later in the order, so its gradient is complete then); hooks
       registered with ``register_post_accumulate_grad_hook`` run right
       after, while the walk goes on (numgpt.training.distributed starts averaging
       gradients there). Gradients of intermediate tensors live only while
       the walk needs them.

An op with several outputs (``record_outputs``) is one node of the graph,
with one tensor per output hanging from it: each output tensor hands its
gradient back to that node under its position, and the node's backward runs
once, after every use of every output, with one gradient per output (None for
an output no path from the loss went through).

The walk frees the graph as it goes (each node's backward closure and the
arrays it holds), as PyTorch does: a second ``backward()`` through the same
graph raises, unless the first was called with ``retain_graph=True``.
"""
import contextlib

import numpy

from numgpt import backend
from numgpt.device import array_module, device_of, to_device, to_host

_grad_enabled = True


def is_grad_enabled():
    return _grad_enabled


@contextlib.contextmanager
def _grad_mode(enabled):
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, enabled
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """Context manager (and decorator) that records no graph, like ``torch.no_grad()``."""
    return _grad_mode(False)


def enable_grad():
    return _grad_mode(True)


class Tensor:
    """An array with an optional gradient and a place in the graph."""

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_op", "_grad_hooks", "__weakref__")
    __array_priority__ = 100  # ndarray + Tensor defers to Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        self.data = backend.asarray(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only float tensors can require gradients, got dtype {self.data.dtype}")
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = None
        self._grad_hooks = ()

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(tensor)`` each time backward() has added this leaf's gradient
        into ``.grad`` (PyTorch's method of that name). Returns a handle with
        ``remove()``."""
        if self._backward is not None:
            raise RuntimeError("post-accumulate-grad hooks are for leaves (parameters), not for computed tensors")
        self._grad_hooks = self._grad_hooks + (hook,)
        return _HookHandle(self, hook)

    # ------------------------------------------------------------ array facts
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def is_leaf(self):
        return self._backward is None

    def numel(self):
        return self.data.size

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

    def __len__(self):
        return len(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape {self.shape}")
        return self.data.item()

    def numpy(self):
        """The data as a NumPy array: an explicit copy to the host for a tensor on a CUDA device."""
        return to_host(self.data)

    @property
    def device(self):
        """Where the data lives: a numgpt.device.Device ("cpu", "cuda:0", ...)."""
        return device_of(self.data)

    def to(self, device):
        """This tensor's data on ``device`` (a new leaf tensor when it moves, this one when it is there)."""
        moved = to_device(self.data, device)
        return self if moved is self.data else Tensor(moved, requires_grad=self.requires_grad)

    def cpu(self):
        return self.to("cpu")

    def tolist(self):
        return self.data.tolist()

    def detach(self):
        """The same array, cut from the graph."""
        return Tensor(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    # ------------------------------------------------------------ ops as methods
    def __add__(self, other):
        # the documented cycle: Tensor's operators are ops, and the ops make Tensors
        from numgpt.ops.elementwise import add
        return add(self, other)

    __radd__ = __add__

    def __mul__(self, other):
        # the documented cycle: Tensor's operators are ops
        from numgpt.ops.elementwise import mul
        return mul(self, other)

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __truediv__(self, other):
        if isinstance(other, Tensor):
            raise TypeError("numgpt divides tensors by scalars only")
        return self * (1.0 / other)

    def __getitem__(self, index):
        # the documented cycle: Tensor's operators are ops
        from numgpt.ops.shape import getitem
        return getitem(self, index)

    def reshape(self, *shape):
        # the documented cycle: Tensor's operators are ops
        from numgpt.ops.shape import reshape
        return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)

    view = reshape

    def transpose(self, dim0, dim1):
        # the documented cycle: Tensor's operators are ops
        from numgpt.ops.shape import transpose
        return transpose(self, dim0, dim1)

    def flatten(self, start_dim=0, end_dim=-1):
        """Merge dims start_dim..end_dim, as ``torch.flatten``."""
        # the documented cycle: Tensor's operators are ops
        from numgpt.ops.shape import reshape
        shape = self.shape
        start, end = start_dim % len(shape), end_dim % len(shape)
        merged = int(numpy.prod(shape[start:end + 1]))
        return reshape(self, shape[:start] + (merged,) + shape[end + 1:])

    def sum(self):
        # the documented cycle: Tensor's operators are ops
        from numgpt.ops.elementwise import sum_all
        return sum_all(self)

    def mean(self):
        return self.sum() * (1.0 / self.data.size)

    # ------------------------------------------------------------ backward
    def backward(self, gradient=None, retain_graph=False):
        """Backpropagate from this tensor; leaves' ``.grad`` accumulate.

        ``gradient`` is d(objective)/d(self); it may be omitted for a scalar.
        The graph is freed as it is walked, unless ``retain_graph`` (see the
        module docstring for the steps).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (made under no_grad, or from "
                               "constants)")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar, this tensor has shape {self.shape}")
            gradient = array_module(self.data).ones_like(self.data)
        else:
            gradient = array_of(gradient).astype(self.dtype, copy=False)
            if gradient.shape != self.shape:
                raise ValueError(f"gradient shape {gradient.shape} does not match tensor shape {self.shape}")

        order = _topological_order(self)                              # 1. parents before children
        grads = {id(self): gradient}
        adopted = {id(gradient)}                      # arrays a leaf kept as its .grad in this pass (or the caller's)
        while order:
            node = order.pop()                                        # 2. children first
            dout = grads.pop(id(node), None)
            if dout is None:
                continue
            if node._backward is None:                                # 4. a leaf: its gradient is complete
                _accumulate_leaf(node, dout, adopted)
                for hook in node._grad_hooks:
                    hook(node)
                continue
            if node._backward is _freed:
                raise RuntimeError(f"backward() through the graph a second time: the {node._op} node's "
                                   f"intermediate values were freed by the first backward(); call the first "
                                   f"one with retain_graph=True to keep them")
            parent_grads = node._backward(dout)
            for parent, grad in zip(node._parents, parent_grads):
                if grad is None or parent is None or not parent.requires_grad:
                    continue
                key = id(parent)
                grads[key] = grad if key not in grads else grads[key] + grad   # 3. the fan-out sum
            if not retain_graph:
                node._parents, node._backward = (), _freed


def _freed(dout):
    """The backward of a node whose graph was freed (see Tensor.backward)."""
    raise AssertionError("unreachable: Tensor.backward checks for freed nodes first")


def _accumulate_leaf(leaf, grad, adopted):
    """Add a leaf's gradient of this pass into ``.grad`` (accumulating, as PyTorch).

    A leaf without a gradient yet keeps the array its op's backward returned,
    without a copy, when nothing else can see that array: it owns its memory
    (it is not a view, so no other gradient shares it), it is writeable and
    of the leaf's dtype, and no other leaf kept it in this pass, nor is it the
    caller's ``gradient`` (``adopted``; add's backward hands one array to both
    of its inputs). Otherwise the leaf stores a copy.
    """
    if grad.shape != leaf.shape:
        raise RuntimeError(f"internal error: gradient of shape {grad.shape} for a leaf of shape {leaf.shape}")
    if leaf.grad is not None:
        leaf.grad += grad
        return
    private = (grad.base is None and getattr(grad.flags, "writeable", True) and grad.flags.c_contiguous
               and grad.dtype == leaf.dtype and id(grad) not in adopted)
    leaf.grad = grad if private else array_module(grad).array(grad, dtype=leaf.dtype, copy=True)
    adopted.add(id(leaf.grad))


class _HookHandle:
    def __init__(self, tensor, hook):
        self.tensor, self.hook = tensor, hook

    def remove(self):
        self.tensor._grad_hooks = tuple(h for h in self.tensor._grad_hooks if h is not self.hook)


def _topological_order(root):
    """Tensors reachable from ``root`` that need grad, parents before children."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent is not None and parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


def array_of(value):
    """The array behind a Tensor, or ``value`` as an array."""
    return value.data if isinstance(value, Tensor) else backend.asarray(value)


def as_tensor(value):
    return value if isinstance(value, Tensor) else Tensor(value)


class _OutputGradients(dict):
    """The gradients a several-output node has received so far: output position -> gradient.
    The walk adds it like any gradient (the fan-out sum); each output gives its own position once."""

    def __add__(self, other):
        if set(self) & set(other):
            raise AssertionError(f"internal error: output gradients {sorted(set(self) & set(other))} given twice")
        return _OutputGradients({**self, **other})


def record_outputs(outs, parents, backward, op="custom"):
    """Tensors for the outputs ``outs`` of one op with several outputs (see the
    module docstring); ``backward(douts)`` gets a tuple with one gradient (or None)
    per output and returns one gradient (or None) per entry of ``parents``."""
    node = record(None, parents, lambda grads: backward(tuple(grads.get(i) for i in range(len(outs)))), op)
    return tuple(record(out, (node,), _output_gradient(i), f"{op}[{i}]") for i, out in enumerate(outs))


def _output_gradient(position):
    """The backward of output ``position`` of a several-output node: its gradient, filed under its position."""
    return lambda dout: (_OutputGradients({position: dout}),)


def record(out, parents, backward, op="custom"):
    """Wrap ``out`` in a Tensor made by the op named ``op``; when a parent needs
    grad, remember how to backprop.

    ``backward(dout)`` returns one gradient (or None) per entry of ``parents``.
    """
    result = Tensor.__new__(Tensor)
    result.data, result.grad, result._op = out, None, op
    result._parents, result._backward, result._grad_hooks = (), None, ()
    result.requires_grad = _grad_enabled and any(p is not None and p.requires_grad for p in parents)
    if result.requires_grad:
        result._parents, result._backward = tuple(parents), backward
    return result
