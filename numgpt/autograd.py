"""A small reverse-mode autograd over backend arrays.

A ``Tensor`` wraps one array (``.data``). Each op in ``numgpt.ops`` is a pair
of pure functions, ``<op>_forward(...) -> (out, cache)`` and
``<op>_backward(dout, cache) -> grads``; its tape wrapper calls the forward and
hands ``record`` the output, the input tensors and a closure over the backward.
``Tensor.backward`` sorts the graph topologically and runs those closures in
reverse, summing the gradients of a tensor used more than once.

Gradients of leaves (parameters, inputs made with ``requires_grad=True``)
accumulate into ``.grad`` across backward calls, as in PyTorch; gradients of
intermediate tensors live only while the backward pass needs them.
"""
import contextlib

import numpy

from numgpt import backend

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

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "__weakref__")
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
        return self.data

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
        from numgpt.ops.elementwise import add
        return add(self, other)

    __radd__ = __add__

    def __mul__(self, other):
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
        from numgpt.ops.shape import getitem
        return getitem(self, index)

    def reshape(self, *shape):
        from numgpt.ops.shape import reshape
        return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)

    view = reshape

    def transpose(self, dim0, dim1):
        from numgpt.ops.shape import transpose
        return transpose(self, dim0, dim1)

    def flatten(self, start_dim=0, end_dim=-1):
        """Merge dims start_dim..end_dim, as ``torch.flatten``."""
        from numgpt.ops.shape import reshape
        shape = self.shape
        start, end = start_dim % len(shape), end_dim % len(shape)
        merged = int(numpy.prod(shape[start:end + 1]))
        return reshape(self, shape[:start] + (merged,) + shape[end + 1:])

    def sum(self):
        from numgpt.ops.elementwise import sum_all
        return sum_all(self)

    def mean(self):
        return self.sum() * (1.0 / self.data.size)

    # ------------------------------------------------------------ backward
    def backward(self, gradient=None):
        """Backpropagate from this tensor; leaves' ``.grad`` accumulate.

        ``gradient`` is d(objective)/d(self); it may be omitted for a scalar.
        The graph is freed as it is walked (as ``retain_graph=False``).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (made under no_grad, or from constants)")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar, this tensor has shape {self.shape}")
            gradient = backend.xp.ones_like(self.data)
        else:
            gradient = array_of(gradient).astype(self.dtype, copy=False)
            if gradient.shape != self.shape:
                raise ValueError(f"gradient shape {gradient.shape} does not match tensor shape {self.shape}")

        order = _topological_order(self)
        grads = {id(self): gradient}
        leaves = {}                                   # id -> (leaf, its summed gradient in this pass)
        while order:
            node = order.pop()   # children first; popping lets each tensor go once its backward has run
            dout = grads.pop(id(node), None)
            if dout is None:
                continue
            if node._backward is None:
                leaves[id(node)] = (node, dout)
                continue
            parent_grads = node._backward(dout)
            for parent, grad in zip(node._parents, parent_grads):
                if grad is None or parent is None or not parent.requires_grad:
                    continue
                key = id(parent)
                # out of place: a grad array may be shared by two parents (add's backward)
                grads[key] = grad if key not in grads else grads[key] + grad
            node._parents, node._backward = (), None
        _accumulate_leaves(leaves.values(), gradient)


def _owner(array):
    """The array that owns ``array``'s memory."""
    while isinstance(array.base, numpy.ndarray):
        array = array.base
    return array


def _accumulate_leaves(leaf_grads, gradient):
    """Add each leaf's gradient of this pass into ``.grad`` (accumulating, as PyTorch).

    A leaf without a gradient yet takes the array itself, without a copy, when
    nothing else can write to it: writeable, contiguous, of the leaf's dtype,
    not the caller's ``gradient`` and overlapping no other leaf's array (views
    of one buffer in disjoint rows, like the split of the fused QKV gradient,
    are fine). Anything else is copied.
    """
    leaf_grads = list(leaf_grads)
    by_owner = {}
    for _, grad in leaf_grads:
        by_owner.setdefault(id(_owner(grad)), []).append(grad)
    for leaf, grad in leaf_grads:
        if grad.shape != leaf.shape:
            raise RuntimeError(f"internal error: gradient of shape {grad.shape} for a leaf of shape {leaf.shape}")
        if leaf.grad is not None:
            leaf.grad += grad
            continue
        siblings = by_owner[id(_owner(grad))]
        ownable = (grad.flags.writeable and grad.flags.c_contiguous and grad.dtype == leaf.dtype
                   and _owner(grad) is not _owner(gradient)
                   and sum(other is grad for other in siblings) == 1
                   and not any(other is not grad and numpy.may_share_memory(grad, other) for other in siblings))
        leaf.grad = grad if ownable else backend.xp.array(grad, dtype=leaf.dtype, copy=True)


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


def record(out, parents, backward):
    """Wrap ``out`` in a Tensor; when a parent needs grad, remember how to backprop.

    ``backward(dout)`` returns one gradient (or None) per entry of ``parents``.
    """
    result = Tensor.__new__(Tensor)
    result.data, result.grad = out, None
    result._parents, result._backward = (), None
    result.requires_grad = _grad_enabled and any(p is not None and p.requires_grad for p in parents)
    if result.requires_grad:
        result._parents, result._backward = tuple(parents), backward
    return result
