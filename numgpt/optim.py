"""AdamW with the semantics of ``torch.optim.AdamW`` (decoupled weight decay,
bias correction) and ``clip_grad_norm_``.

The update of one parameter is one pure function, ``adamw_update`` (the NumPy
reference; its numba twin updates in a single pass over memory).
"""
import math

import numpy

from numgpt.device import array_module, is_host, like
from numgpt.errors import NumgptError
from numgpt.precision import clear_autocast_cache
from numgpt.registry import implementation

HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay")
# PyTorch's AdamW group flags: each value numgpt's update honours (other values change the math)
TORCH_FLAGS = {"amsgrad": False, "maximize": False, "decoupled_weight_decay": True}
# PyTorch's group options that choose how the same update runs (loops, graphs, fused kernels)
TORCH_EXECUTION_OPTIONS = ("foreach", "capturable", "differentiable", "fused")


class OptimizerStateError(NumgptError, ValueError):
    """An optimizer state_dict (numgpt's or PyTorch's) that does not fit this AdamW."""


def adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step on arrays, in place; ``step`` counts from 1."""
    dtype = param.dtype.type
    param *= dtype(1.0 - lr * weight_decay)                              # 1. decoupled decay
    exp_avg *= dtype(beta1)                                              # 2. m = b1 m + (1 - b1) g
    exp_avg += dtype(1.0 - beta1) * grad
    exp_avg_sq *= dtype(beta2)                                           # 3. v = b2 v + (1 - b2) g^2
    exp_avg_sq += dtype(1.0 - beta2) * grad * grad
    step_size = lr / (1.0 - beta1 ** step)                               # 4. bias corrections
    denom = array_module(exp_avg_sq).sqrt(exp_avg_sq) / dtype(math.sqrt(1.0 - beta2 ** step))
    denom += dtype(eps)
    param -= dtype(step_size) * exp_avg / denom                          # 5. p -= lr m_hat / (sqrt(v_hat) + eps)


class AdamW:
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)``.

    ``params`` is an iterable of tensors or of dicts (parameter groups with
    their own hyper-parameters), as in PyTorch.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        params = list(params)
        if not params:
            raise ValueError("AdamW got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            group = {**defaults, **group, "params": list(group["params"])}
            self._check_hyperparameters(group)
            self.param_groups.append(group)
        self.state = {}  # id(param) -> {"step", "exp_avg", "exp_avg_sq"}

    @staticmethod
    def _check_hyperparameters(group):
        beta1, beta2 = group["betas"]
        checks = [("lr", group["lr"] >= 0), ("eps", group["eps"] >= 0), ("weight_decay", group["weight_decay"] >= 0),
                  ("betas[0]", 0 <= beta1 < 1), ("betas[1]", 0 <= beta2 < 1)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"AdamW: invalid {name} in {({k: v for k, v in group.items() if k != 'params'})}")

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none=True):
        for param in self._params():
            if set_to_none or param.grad is None:
                param.grad = None
            else:
                param.grad[...] = 0

    def step(self):
        """One AdamW update of every parameter with a gradient. The moments live on their
        parameter's device: made there on the first step, moved there if the model moved."""
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state.get(id(param))
                if state is None:
                    xp = array_module(param.data)
                    state = self.state[id(param)] = {"step": 0, "exp_avg": xp.zeros_like(param.data),
                                                     "exp_avg_sq": xp.zeros_like(param.data)}
                elif is_host(state["exp_avg"]) != is_host(param.data):
                    state["exp_avg"], state["exp_avg_sq"] = (like(state[name], param.data)
                                                             for name in ("exp_avg", "exp_avg_sq"))
                update = implementation(adamw_update, param.data)
                state["step"] += 1
                update(param.data, param.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                       group["lr"], beta1, beta2, group["eps"], group["weight_decay"])
        clear_autocast_cache()                                    # the weights' bf16 copies are stale now

    def state_dict(self):
        """{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}, PyTorch's layout."""
        index = {id(p): i for i, p in enumerate(self._params())}
        groups = []
        for group in self.param_groups:
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": [index[id(p)] for p in group["params"]]})
        state = {index[key]: dict(value) for key, value in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore moments, steps and hyper-parameters from numgpt's ``state_dict()`` or PyTorch's
        ``torch.optim.AdamW.state_dict()`` (``step`` a 0-d tensor, flags such as ``amsgrad``);
        shapes and group sizes must fit, and a flag numgpt's update cannot honour is refused."""
        if not (isinstance(state_dict, dict) and isinstance(state_dict.get("state"), dict)
                and isinstance(state_dict.get("param_groups"), list)):
            raise OptimizerStateError("optimizer state_dict: expected a dict with 'state' (a dict) and "
                                      "'param_groups' (a list)")
        groups = [_checked_group(group, number) for number, group in enumerate(state_dict["param_groups"])]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(own["params"]) for g, own in zip(groups, self.param_groups)):
            raise OptimizerStateError("optimizer state_dict has a different number of parameter groups or "
                                      "parameters")
        params = self._params()
        new_state = {}
        for key, value in state_dict["state"].items():
            if not (isinstance(key, int) and 0 <= key < len(params)) or not isinstance(value, dict):
                raise OptimizerStateError(f"optimizer state: key {key!r} is not the index of one of the "
                                          f"{len(params)} parameters, or its entry is not a dict")
            param = params[key]
            for name in ("exp_avg", "exp_avg_sq"):
                if tuple(getattr(value.get(name), "shape", ())) != param.shape:
                    raise OptimizerStateError(f"optimizer state {key}.{name} has shape "
                                              f"{getattr(value.get(name), 'shape', None)}, the parameter has "
                                              f"{param.shape}")
            new_state[id(param)] = {"step": _step_count(value.get("step"), key),
                                    **{name: like(array_module(value[name]).array(value[name], dtype=param.dtype),
                                                  param.data)                       # a copy, on the parameter's device
                                       for name in ("exp_avg", "exp_avg_sq")}}
        for group, saved in zip(self.param_groups, groups):
            group.update({k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "params"})
        self.state = new_state


def _checked_group(group, number):
    """The hyper-parameters of a saved parameter group (numgpt's or PyTorch's) that numgpt uses."""
    where = f"optimizer param_groups[{number}]"
    if not isinstance(group, dict) or not isinstance(group.get("params"), list):
        raise OptimizerStateError(f"{where}: expected a dict with a 'params' list")
    unknown = sorted(set(group) - {"params", *HYPERPARAMETERS, *TORCH_FLAGS, *TORCH_EXECUTION_OPTIONS}, key=str)
    if unknown:
        raise OptimizerStateError(f"{where}: unknown settings {unknown}; numgpt's AdamW takes "
                                  f"{', '.join(HYPERPARAMETERS)}")
    for flag, honoured in TORCH_FLAGS.items():
        if flag in group and group[flag] is not honoured:
            raise OptimizerStateError(f"{where}: {flag} is {group[flag]!r}; numgpt's AdamW runs only with "
                                      f"{flag}={honoured}")
    missing = [name for name in HYPERPARAMETERS if name not in group]
    betas = group.get("betas")
    numbers = [group.get(name) for name in ("lr", "eps", "weight_decay")] + list(
        betas if isinstance(betas, (list, tuple)) and len(betas) == 2 else [None])
    if missing or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          for v in numbers):
        raise OptimizerStateError(f"{where}: expected finite numbers lr, eps, weight_decay and two betas; "
                                  f"found {({k: group.get(k) for k in HYPERPARAMETERS})}")
    checked = {name: group[name] for name in HYPERPARAMETERS}
    try:
        AdamW._check_hyperparameters(checked)
    except ValueError as error:
        raise OptimizerStateError(f"{where}: {error}") from None
    return {**checked, "params": group["params"]}


def _step_count(step, key):
    """A saved step as an int: numgpt writes an int, PyTorch a 0-d float tensor."""
    value = numpy.asarray(step) if step is not None else None
    if value is None or value.shape != () or value.dtype.kind not in "iuf" or not numpy.isfinite(value) \
            or value < 0 or value != int(value):
        raise OptimizerStateError(f"optimizer state {key}.step is {step!r}; expected a whole number of steps")
    return int(value)


def sum_of_squares(array):
    """The sum of the squared elements (the NumPy reference: one BLAS dot product): a Python
    float for a host array; for a device array a 0-d array on its device, so that grad_norm
    fetches one number for all the parameters."""
    flat = array.ravel()
    squares = array_module(array).vdot(flat, flat)
    return float(squares) if is_host(array) else squares


def grad_norm(parameters):
    """The global L2 norm of the gradients, a Python float (inf or nan when any gradient is).
    The squares are summed on the gradients' device and fetched once."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = sum(implementation(sum_of_squares, grad)(grad) for grad in grads)
    return math.sqrt(float(total))


def clip_grad_norm_(parameters, max_norm, total_norm=None):
    """Scale gradients in place so that their global L2 norm is at most max_norm;
    returns the norm before clipping (as ``torch.nn.utils.clip_grad_norm_``).
    ``total_norm`` may pass a norm already computed for these gradients."""
    parameters = list(parameters)
    total = grad_norm(parameters) if total_norm is None else total_norm
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in parameters:
            if p.grad is not None:
                p.grad *= p.grad.dtype.type(coef)
    return total
