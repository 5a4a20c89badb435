"""numgpt against PyTorch on the seed's training step, in one run.

    python benchmarks/bench_step.py --out benchmarks/results.md
    python benchmarks/bench_step.py --scale --out benchmarks/results.md   # + step time by context and batch
    python benchmarks/bench_step.py --sides numgpt,torch --steps 3        # a quick run: two sides only
    python benchmarks/bench_step.py --model smollm2-135m --out benchmarks/results-smollm2.md   # vs transformers

The step is the seed's: GPT_CONFIG_124M (context 256, 12 layers, 768 wide,
dropout 0.1, untied head), batch 2 x 256 random tokens, zero_grad, forward,
mean cross-entropy, backward, AdamW(lr 4e-4, weight_decay 0.1).

The sides (``--sides``, a comma list of these names; default all):
- ``numgpt``: numgpt with its numba kernels (NUMGPT_KERNELS=numba);
- ``numpy``: numgpt's readable NumPy reference path (NUMGPT_KERNELS=numpy);
- ``bf16``: numgpt in ``bf16-mixed``: the forward and the loss under
  ``numgpt.autocast("cpu", dtype="bfloat16")``, numba kernels; a numgpt
  without ``numgpt.autocast`` reports the side "not available";
- ``torch``: PyTorch eager, ``llms_from_scratch.ch04.GPTModel``;
- ``autocast``: the same, the forward and the loss under
  ``torch.autocast("cpu", dtype=torch.bfloat16)`` (oneDNN's bf16 products);
- ``sdpa``: the same model, each block's attention computed by
  ``torch.nn.functional.scaled_dot_product_attention`` (is_causal=True,
  dropout_p = drop_rate in training, as the seed drops attention weights);
  on CPU a nonzero dropout_p sends it to the math kernel, not flash;
- ``flash``: as ``sdpa`` with dropout_p = 0, so that PyTorch's CPU flash
  kernel runs: one dropout fewer than the seed's step;
- ``compile``: ``torch.compile`` of the seed's model (inductor, C++ on CPU),
  compiled into an empty inductor cache; its first step (compile included)
  is reported apart. A side that fails (no C++ compiler, ...) is left out of
  the table with its one-line reason.

How it measures:
- every side runs in its own process and stays resident; the parent asks
  them for one step at a time, alternating, so that all see the same machine
  load; each side's peak memory is its own ru_maxrss; one warm-up step each.
- PyTorch runs with torch.set_num_threads(2), by the interpreter
  ``--torch-python`` (default: the one running this script; ``pip install -e
  '.[bench]'`` installs torch, transformers and llms-from-scratch); without
  them only numgpt's sides run, and the report says how to install them.
- Before anything is timed, a separate process runs one step from the same
  seed with the numba kernels and with the NumPy path and checks that both
  losses (before and after the AdamW update) agree.
- FLOPs per step, counted analytically (dense attention, as PyTorch eager computes it):
      6 * P_mm * B*T  +  12 * L * B * T^2 * C,
  P_mm = L * 12 * C^2 + C * V, the weights of every matrix product (biases,
  LayerNorm and the embedding lookups excluded); 394 GFLOP for the seed's step.
  The same count divides every side's time (a causal kernel that skips the
  masked half does less work, and so shows a higher GFLOP/s).
- The sgemm ceiling is the best of a few (4096 x 4096) @ (4096 x 4096) float32
  products, by NumPy's BLAS and by numgpt's matmul kernel, measured in the
  same run (before and after the steps).
- Kernel compile time: the kernels compiled into an empty cache directory
  (first run) and loaded from it (later runs), each in a fresh process.
- Generation: greedy, 50 new tokens after a 4-token prompt, 124M shape, eval
  mode: numgpt's generate_text_simple (KV cache) against the seed's cache-less
  torch loop (``llms_from_scratch.ch04.generate_text_simple``).
- ``--scale``: numgpt and PyTorch eager, one process per side and shape, at
  context 256/512/1024 x batch 1..8, in float32 (numgpt 32-true, PyTorch
  eager) and in bf16 (numgpt bf16-mixed, PyTorch under autocast); a shape whose estimated memory exceeds
  ``--scale-budget-gib`` is skipped (numgpt.training.train.estimate_training_bytes for
  numgpt, torch_eager_training_bytes below for PyTorch).
- The report ends with issue 24's targets, the CPU's bf16 path beside them,
  and this run's figure for each it measures (met or MISSED).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from common import (Child, add_torch_python, alternate, bf16_path, machine_description, one_line, peak_mb,
                    reference_side, run_json, target_line, write_report)

HERE = Path(__file__).resolve()
CONFIG = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
          "drop_rate": 0.1, "qkv_bias": False}
BATCH, SEQ = 2, 256
LR, WEIGHT_DECAY = 4e-4, 0.1
SEED = 123
GEN_NEW_TOKENS, GEN_PROMPT = 50, [6109, 3626, 6100, 345]     # "Every effort moves you"
SCALE_CONTEXTS, SCALE_BATCHES = (256, 512, 1024), (1, 2, 4, 8)
SCALE_PRECISIONS = (("32-true", "torch"), ("bf16-mixed", "autocast"))   # numgpt's precision, PyTorch's side beside it
AGREEMENT_RTOL = 1e-4                                        # numba vs NumPy loss, float32

SIDES = {                                                    # --sides name: the row's label
    "numgpt": "numgpt (numba kernels)",
    "numpy": "numgpt, NumPy reference (NUMGPT_KERNELS=numpy)",
    "bf16": "numgpt bf16-mixed (numgpt.autocast, numba kernels)",
    "torch": "PyTorch eager (the seed's GPTModel)",
    "autocast": "PyTorch eager under torch.autocast(\"cpu\", dtype=torch.bfloat16)",
    "sdpa": "PyTorch, scaled_dot_product_attention",
    "flash": "PyTorch, scaled_dot_product_attention, no attention dropout",
    "compile": "PyTorch torch.compile (the seed's GPTModel)",
}
NUMGPT_SIDES = {"numgpt": "numba", "numpy": "numpy", "bf16": "numba"}   # side: its NUMGPT_KERNELS
PRECISIONS = {"bf16": "bf16-mixed"}                          # a numgpt side's precision, when not 32-true
TORCH_VARIANTS = ("torch", "autocast", "sdpa", "flash", "compile")


class Setup(NamedTuple):
    """What one run times: the model, the step's batch and the --scale grid."""
    name: str
    cfg: dict
    batch: int
    seq: int
    scale_contexts: tuple
    scale_batches: tuple
    sgemm_n: int                                             # the sgemm ceiling's (n x n) @ (n x n)


FULL = Setup("GPT_CONFIG_124M", CONFIG, BATCH, SEQ, SCALE_CONTEXTS, SCALE_BATCHES, 4096)
# --tiny: proves that each side runs and that the report renders, in seconds
TINY = Setup("a tiny GPT (smoke test, --tiny: its figures mean nothing)",
             dict(CONFIG, context_length=64, emb_dim=64, n_heads=4, n_layers=2), 2, 64, (32, 64), (1, 2), 512)


def step_flops(cfg, batch, seq):
    """6 * P_mm * tokens + 12 * L * B * T^2 * C (see the module docstring)."""
    C, L, V = cfg["emb_dim"], cfg["n_layers"], cfg["vocab_size"]
    p_mm = L * 12 * C * C + C * V
    return 6 * p_mm * batch * seq + 12 * L * batch * seq * seq * C


def parameter_count(cfg):
    """The seed's GPTModel's parameters (untied head)."""
    C, L, V = cfg["emb_dim"], cfg["n_layers"], cfg["vocab_size"]
    per_block = 12 * C * C + 10 * C + (3 * C if cfg["qkv_bias"] else 0)
    return 2 * V * C + cfg["context_length"] * C + L * per_block + 2 * C


def causal_step_flops(cfg, batch, seq):
    """step_flops with attention's masked half left out, as numgpt's flash kernel computes it."""
    C, L = cfg["emb_dim"], cfg["n_layers"]
    return step_flops(cfg, batch, seq) - 6 * L * batch * seq * seq * C


def torch_eager_training_bytes(cfg, batch, seq):
    """A rough estimate of PyTorch eager's memory for the seed's step (float32), counted as
    numgpt.training.train.estimate_training_bytes counts numgpt's, from what the seed's autograd graph keeps:

    - weights, gradients and two AdamW moments: 16 bytes per parameter;
    - per block and token, in floats: LayerNorm (x - mean, normalised x, output) twice, 6 C;
      q, k, v, 3 C; the heads' context, C; the residual sum, C; the feed-forward's first
      output and GELU's saved tanh, 1 + tanh, 0.5 * x and product, 5 * 4 C; two dropout
      masks (bytes), C / 2: about 32 C;
    - per block and attention weight: the softmax output and the dropout output (floats)
      and the dropout mask (a byte): 9 / 4 floats;
    - the backward's attention scratch (scores and their gradients, one block at a time), 3;
    - logits, log-softmax and their gradient: 3 * B * T * V.
    The measured peak adds the runtime's own few hundred MB (4.07 GB measured at 2 x 256)."""
    B, T, C, L, NH, V = batch, seq, cfg["emb_dim"], cfg["n_layers"], cfg["n_heads"], cfg["vocab_size"]
    params = parameter_count(cfg)
    per_layer = B * T * C * 32 + B * NH * T * T * 9 // 4
    return 16 * params + 4 * (L * per_layer + B * NH * T * T * 3 + 3 * B * T * V)


def batch_of(cfg, batch, seq, seed=0):
    import numpy
    rng = numpy.random.default_rng(seed)
    return (rng.integers(0, cfg["vocab_size"], (batch, seq)), rng.integers(0, cfg["vocab_size"], (batch, seq)))


# ------------------------------------------------------------------ the sides (child processes)

class NumgptSide:
    """numgpt's step; ``precision`` 32-true (float32) or bf16-mixed (forward and loss under
    ``numgpt.autocast("cpu", dtype="bfloat16")``, as torch.autocast is used)."""

    def __init__(self, cfg, batch, seq, precision="32-true"):
        import contextlib

        import numgpt
        from numgpt.models.gpt import GPTModel
        if precision == "bf16-mixed" and not hasattr(numgpt, "autocast"):
            raise NotImplementedError("bf16-mixed is not available in this numgpt (it has no numgpt.autocast)")
        self.autocast = ((lambda: numgpt.autocast("cpu", dtype="bfloat16")) if precision == "bf16-mixed"
                         else contextlib.nullcontext)
        numgpt.manual_seed(SEED)
        self.numgpt = numgpt
        self.model = GPTModel(cfg)
        self.model.train()
        self.optimizer = numgpt.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.x, self.y = batch_of(cfg, batch, seq)
        self.cfg = cfg
        self.precision = precision

    def describe(self):
        from numgpt import backend
        return {"kernels": backend.get_kernel_mode()}

    def step(self):
        start = time.perf_counter()
        self.optimizer.zero_grad()
        with self.autocast():
            logits = self.model(self.x)
            loss = self.numgpt.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.y.reshape(-1))
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start, loss.item()

    def generate(self):
        """Greedy tokens/s; the bf16-mixed side generates in bf16-true (``--precision bf16-true``:
        its model converted in place, so this is the side's last command before it exits)."""
        import numpy
        from numgpt.models.generate import generate_text_simple
        from numgpt.nn.inference_bf16 import to_bf16_true
        if self.precision == "bf16-mixed":
            self.model = to_bf16_true(self.model)
        self.model.eval()
        idx = numpy.array([GEN_PROMPT])
        generate_text_simple(self.model, idx, 5, self.cfg["context_length"])          # warm-up
        start = time.perf_counter()
        out = generate_text_simple(self.model, idx, GEN_NEW_TOKENS, self.cfg["context_length"])
        seconds = time.perf_counter() - start
        self.model.train()
        return GEN_NEW_TOKENS / seconds, [int(t) for t in out[0, -GEN_NEW_TOKENS:]]


def sdpa_attention_class(attention_dropout):
    """The seed's MultiHeadAttention with its forward computed by PyTorch's fused
    scaled_dot_product_attention: the same parameters (W_query, W_key, W_value,
    out_proj) and buffers, so a model built from the same seed has the same weights.
    ``attention_dropout``: drop attention weights in training as the seed does
    (dropout_p = the seed's rate), or never (dropout_p = 0)."""
    import torch
    from llms_from_scratch.ch03 import MultiHeadAttention

    class SdpaMultiHeadAttention(MultiHeadAttention):
        def forward(self, x):
            b, num_tokens, _ = x.shape

            def heads(projected):       # (b, T, d_out) -> (b, T, NH, HS) -> (b, NH, T, HS)
                return projected.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)

            queries, keys, values = heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x))
            dropout_p = self.dropout.p if attention_dropout and self.training else 0.0
            context = torch.nn.functional.scaled_dot_product_attention(   # (b, NH, T, HS), scale 1/sqrt(HS)
                queries, keys, values, dropout_p=dropout_p, is_causal=True)
            context = context.transpose(1, 2).reshape(b, num_tokens, self.d_out)   # (b, NH, T, HS) -> (b, T, d_out)
            return self.out_proj(context)

    return SdpaMultiHeadAttention


def attention_kernel(attention, x):
    """The ATen kernels one forward and backward of ``attention`` on ``x`` runs for the
    attention itself (flash, math, ...), as the profiler names them."""
    from torch.profiler import profile
    with profile() as prof:
        attention(x).sum().backward()
    names = sorted({event.name.removeprefix("aten::_scaled_dot_product_") for event in prof.events()
                    if event.name.startswith("aten::_scaled_dot_product") and not event.name.endswith("_backward")})
    attention.zero_grad()
    return ", ".join(names) or "none: the seed's unfused matmul-softmax-matmul"


class TorchSide:
    """The seed's PyTorch model: ``variant`` torch (eager), sdpa, flash or compile (see the module docstring)."""

    def __init__(self, cfg, batch, seq, variant="torch"):
        import contextlib

        import torch
        from llms_from_scratch.ch04 import GPTModel
        torch.set_num_threads(2)
        torch.manual_seed(SEED)
        self.torch = torch
        self.model = GPTModel(cfg)
        if variant in ("sdpa", "flash"):
            attention = sdpa_attention_class(attention_dropout=variant == "sdpa")
            for block in self.model.trf_blocks:
                block.att.__class__ = attention                     # same parameters: only forward changes
        self.model.train()
        self.forward = torch.compile(self.model) if variant == "compile" else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        x, y = batch_of(cfg, batch, seq)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.cfg = cfg
        self.variant = variant
        self.autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if variant == "autocast"
                         else contextlib.nullcontext)

    def describe(self):
        if self.variant == "compile":
            return {"version": self.torch.__version__, "attention": "the seed's, as inductor compiles it"}
        first = self.model.trf_blocks[0]
        kernel = attention_kernel(first.att, first.norm1(self.model.tok_emb(self.x[:1, :16])).detach())
        return {"version": self.torch.__version__, "attention": kernel}

    def step(self):
        start = time.perf_counter()
        self.optimizer.zero_grad()
        with self.autocast():
            logits = self.forward(self.x)
            loss = self.torch.nn.functional.cross_entropy(logits.flatten(0, 1), self.y.flatten())
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start, loss.item()

    def generate(self):
        from llms_from_scratch.ch04 import generate_text_simple
        self.model.eval()
        idx = self.torch.tensor([GEN_PROMPT])
        start = time.perf_counter()
        with self.torch.no_grad():
            out = generate_text_simple(self.model, idx, GEN_NEW_TOKENS, self.cfg["context_length"])
        seconds = time.perf_counter() - start
        self.model.train()
        return GEN_NEW_TOKENS / seconds, out[0, -GEN_NEW_TOKENS:].tolist()


def hf_generate(cfg):
    """Greedy generation with Hugging Face transformers' GPT2LMHeadModel and its KV
    cache, at the seed's 124M shape (run by the torch interpreter, in its own process)."""
    import torch
    import transformers
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    config = transformers.GPT2Config(vocab_size=cfg["vocab_size"], n_positions=cfg["context_length"],
                                     n_embd=cfg["emb_dim"], n_layer=cfg["n_layers"], n_head=cfg["n_heads"])
    model = transformers.GPT2LMHeadModel(config).eval()
    idx = torch.tensor([GEN_PROMPT])
    options = dict(do_sample=False, use_cache=True, pad_token_id=cfg["vocab_size"] - 1)
    with torch.no_grad():
        model.generate(idx, max_new_tokens=5, min_new_tokens=5, **options)              # warm-up
        start = time.perf_counter()
        model.generate(idx, max_new_tokens=GEN_NEW_TOKENS, min_new_tokens=GEN_NEW_TOKENS, **options)
        seconds = time.perf_counter() - start
    print(json.dumps({"tokens_per_s": GEN_NEW_TOKENS / seconds, "version": transformers.__version__}), flush=True)


def serve(side_name, variant, setup, precision="32-true"):
    """Child loop: one JSON line per command read from stdin. A side that fails (to build, or in
    a step) answers {"error": one line}, prints its traceback to stderr and ends."""
    try:
        if side_name == "numgpt":
            side = NumgptSide(setup.cfg, setup.batch, setup.seq, precision)
        else:
            side = TorchSide(setup.cfg, setup.batch, setup.seq, variant)
        print(json.dumps({"ready": True, "peak_mb": peak_mb(), **side.describe()}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "step":
                seconds, loss = side.step()
                reply = {"seconds": seconds, "loss": loss}
            elif command == "generate":
                tokens_per_s, tokens = side.generate()
                reply = {"tokens_per_s": tokens_per_s, "tokens": tokens}
            elif command == "peak":
                reply = {"peak_mb": peak_mb()}
            elif command == "exit":
                print(json.dumps({"peak_mb": peak_mb()}), flush=True)
                return
            else:
                reply = {"error": f"unknown command {command!r}"}
            print(json.dumps(reply), flush=True)
    except Exception as error:                                  # noqa: BLE001 -- reported, not hidden
        traceback.print_exc()
        print(json.dumps({"error": one_line(error)}), flush=True)


def check_agreement(cfg, batch, seq):
    """One step from the same seed in numba and in NumPy mode: the losses before and after AdamW."""
    from numgpt import backend
    results = {}
    for mode in ("numba", "numpy"):
        backend.set_kernel_mode(mode)
        side = NumgptSide(cfg, batch, seq)
        _, before = side.step()
        _, after = side.step()
        results[mode] = (before, after)
        del side
    (nb0, nb1), (np0, np1) = results["numba"], results["numpy"]
    worst = max(abs(nb0 - np0) / abs(np0), abs(nb1 - np1) / abs(np1))
    print(json.dumps({"numba": results["numba"], "numpy": results["numpy"], "worst_rel": worst,
                      "ok": worst <= AGREEMENT_RTOL}), flush=True)


def compile_time():
    """Seconds to get every float32 kernel ready (compile or cache load), in this process."""
    from numgpt import kernels
    print(json.dumps({"seconds": kernels.warm_up()}), flush=True)


def scale_child(side_name, setup, context, batch, steps, budget_bytes, precision="32-true", variant="torch"):
    """One side's median step time at one context length and batch size (one process each, so
    the peak is its own): numgpt skips a shape whose estimate exceeds the budget itself, the
    parent does it for PyTorch (whose interpreter has no numgpt)."""
    cfg = dict(setup.cfg, context_length=context)
    if side_name == "numgpt":
        from numgpt.models.memory import estimate_training_bytes
        estimate = estimate_training_bytes(cfg, batch, context)
        if estimate > budget_bytes:
            print(json.dumps({"batch": batch, "skipped": f"estimated {estimate / 2**30:.1f} GiB"}), flush=True)
            return
        try:
            side = NumgptSide(cfg, batch, context, precision)
        except NotImplementedError as error:
            print(json.dumps({"batch": batch, "skipped": str(error)}), flush=True)
            return
    else:
        side = TorchSide(cfg, batch, context, variant)
    side.step()                                                     # warm-up
    times = [side.step()[0] for _ in range(steps)]
    reply = {"batch": batch, "seconds": statistics.median(times), "peak_mb": peak_mb()}
    if side_name == "numgpt":
        reply["estimate_mb"] = estimate / 2 ** 20
    print(json.dumps(reply), flush=True)


# ------------------------------------------------------------------ the parent

def product_rates(operands, repeats=3):
    """GFLOP/s of each (a, b) product in ``operands`` (best of ``repeats``), by NumPy's BLAS and
    by numgpt's matmul kernel where it takes the product: {name: [rate per product]}."""
    import numpy
    from numgpt.kernels import matmul as kernel
    products = {"NumPy's BLAS": numpy.matmul}
    if all(kernel.kernel_operands(a, b) is not None for a, b in operands):
        products["numgpt's kernel"] = kernel.kernel_matmul
    rates = {}
    for name, product in products.items():
        time.sleep(1.0)              # OpenBLAS's threads spin a while after their last call: let them stop
        rates[name] = []
        for a, b in operands:
            out = product(a, b)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                product(a, b, out=out)
                best = min(best, time.perf_counter() - start)
            rates[name].append(2 * a[..., 0].size * a.shape[-1] * b.shape[-1] / best / 1e9)
    return rates


def sgemm_ceiling(n=4096):
    """GFLOP/s of the best (n x n) @ (n x n) float32 product, by NumPy's BLAS and by numgpt's kernel."""
    import numpy
    rng = numpy.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=numpy.float32) for _ in range(2))
    return {name: rates[0] for name, rates in product_rates([(a, b)]).items()}


def step_products(cfg, batch, seq):
    """The step's matrix products by shape: (label, a, b), transposed operands as views, as numgpt runs them."""
    import numpy
    rng = numpy.random.default_rng(0)
    C, V, NH, N = cfg["emb_dim"], cfg["vocab_size"], cfg["n_heads"], batch * seq
    HS = C // NH
    rand = lambda *shape: rng.standard_normal(shape, dtype=numpy.float32)   # noqa: E731
    rows = []
    for name, IN, OUT in (("qkv", C, 3 * C), ("out_proj", C, C), ("fc", C, 4 * C), ("proj", 4 * C, C),
                          ("out_head", C, V)):
        x, weight, dout = rand(N, IN), rand(OUT, IN), rand(N, OUT)
        rows += [(f"{name} forward x @ W.T", x, weight.T), (f"{name} dx = dout @ W", dout, weight),
                 (f"{name} dW = dout.T @ x", dout.T, x)]
    q, k = rand(batch * NH, seq, HS), rand(batch * NH, seq, HS)
    att = rand(batch * NH, seq, seq)
    rows += [("attention scores q @ k.T (per head)", q, k.swapaxes(1, 2)), ("attention att @ v", att, k),
             ("attention dv = att.T @ dy", att.swapaxes(1, 2), q)]
    return rows


def parse_sides(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SIDES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown side(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(SIDES)}")
    return [name for name in SIDES if name in names]                # the table's order, each once


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the Markdown report here (and print it)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side (after one warm-up step)")
    parser.add_argument("--sides", type=parse_sides, default=list(SIDES),
                        help=f"comma list of the sides to time, of {','.join(SIDES)} (default all)")
    add_torch_python(parser)
    parser.add_argument("--scale", action="store_true",
                        help="also time numgpt and PyTorch eager at context 256/512/1024, batch 1..8")
    parser.add_argument("--scale-budget-gib", type=float, default=12.0,
                        help="skip scale configurations whose estimated memory exceeds this")
    parser.add_argument("--model", help="a Llama-family preset (smollm2-135m, ...): numgpt against transformers' "
                                        "LlamaForCausalLM instead (benchmarks/bench_llama.py)")
    parser.add_argument("--no-compile-time", action="store_true",
                        help="skip timing the kernels' compile into an empty cache (minutes on a loaded machine)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)   # smoke test: a tiny GPT
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="torch", choices=TORCH_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"), help=argparse.SUPPRESS)
    parser.add_argument("--context", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model:
        import bench_llama
        return bench_llama.main(args)

    setup = TINY if args.tiny else FULL
    if args.child in ("numgpt", "torch"):
        if args.context:                            # a resident side at another shape (bench_context.py)
            setup = setup._replace(cfg=dict(setup.cfg, context_length=args.context), batch=args.batch,
                                   seq=args.context)
        return serve(args.child, args.variant, setup, args.precision)
    if args.child == "check":
        return check_agreement(setup.cfg, setup.batch, setup.seq)
    if args.child == "compile":
        return compile_time()
    if args.child == "hf-generate":
        return hf_generate(setup.cfg)
    if args.child in ("numgpt-scale", "torch-scale"):
        return scale_child(args.child.removesuffix("-scale"), setup, args.context, args.batch, max(1, args.steps),
                           args.scale_budget_gib * 2 ** 30, args.precision, args.variant)

    me = [sys.executable, str(HERE)] + (["--tiny"] if args.tiny else [])
    torch_me = [args.torch_python, str(HERE)] + (["--tiny"] if args.tiny else [])
    load_before = os.getloadavg()
    torch_version, torch_missing = reference_side(args.torch_python)
    wanted = args.sides if torch_version else [name for name in args.sides if name in NUMGPT_SIDES]

    # 1. kernel compile time: an empty cache, then the cache it filled
    first = cached = None
    if not args.no_compile_time:
        with tempfile.TemporaryDirectory() as cache_dir:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
            first = run_json(me + ["--child", "compile"], env)[-1]["seconds"]
            cached = run_json(me + ["--child", "compile"], env)[-1]["seconds"]
        print(f"kernel compile: {first:.1f} s first run, {cached:.2f} s from cache", file=sys.stderr)

    # 2. numba and NumPy agree before anything is timed
    check = run_json(me + ["--child", "check"])[-1]
    print(f"numba vs NumPy losses: {check}", file=sys.stderr)
    if not check["ok"]:
        sys.exit(f"numba and NumPy paths disagree on the step's loss: {check}")

    # 3. the machine's sgemm ceiling, and the step's products by NumPy's BLAS and by numgpt's kernel
    sgemm = sgemm_ceiling(setup.sgemm_n)
    labelled = step_products(setup.cfg, setup.batch, setup.seq)
    products = {"labels": [label for label, _, _ in labelled],
                **product_rates([(a, b) for _, a, b in labelled])}
    del labelled

    # 4. alternate steps
    with tempfile.TemporaryDirectory() as inductor_cache:
        steps = time_sides(wanted, me, torch_me, inductor_cache, args.steps)
    sgemm = {name: max(rate, sgemm[name]) for name, rate in sgemm_ceiling(setup.sgemm_n).items()}
    if torch_version:
        try:
            steps["generation"]["transformers"] = run_json(torch_me + ["--child", "hf-generate"])[-1]
        except subprocess.CalledProcessError as error:
            print(f"no Hugging Face row: {error.stderr.strip().splitlines()[-1:]}", file=sys.stderr)

    # 5. scale: numgpt float32 against PyTorch eager, numgpt bf16-mixed against PyTorch under autocast,
    #    PyTorch where its estimate fits the budget
    scale_rows = []
    if args.scale:
        budget = ["--steps", "1", "--scale-budget-gib", str(args.scale_budget_gib)]
        for context in setup.scale_contexts:
            for batch in setup.scale_batches:
                for precision, variant in SCALE_PRECISIONS:
                    shape = ["--context", str(context), "--batch", str(batch)]
                    row = {"context": context, "batch": batch, "precision": precision,
                           "numgpt": run_json(me + ["--child", "numgpt-scale", "--precision", precision]
                                              + shape + budget)[-1]}
                    if torch_version:
                        estimate = torch_eager_training_bytes(dict(setup.cfg, context_length=context), batch, context)
                        row["torch"] = ({"skipped": f"estimated {estimate / 2**30:.1f} GiB"}
                                        if estimate > args.scale_budget_gib * 2 ** 30 else
                                        run_json(torch_me + ["--child", "torch-scale", "--variant", variant]
                                                 + shape + budget)[-1])
                    scale_rows.append(row)
                    print(f"scale T={context} B={batch} {precision}: {row}", file=sys.stderr)

    report = render(args, setup, torch_version, torch_missing, first, cached, check, sgemm, products, steps,
                    scale_rows, load_before, os.getloadavg())
    write_report(report, args.out)


def time_sides(wanted, me, torch_me, inductor_cache, n_steps):
    """Start each side's child, then ask them for a step in turn, one warm-up step and ``n_steps``
    timed; then every side's peak memory (of its steps), then the generation of numgpt, numgpt in
    bf16-true and PyTorch eager. A side that
    fails is dropped with its reason. Returns {times, first_step, losses, described, failed,
    generation, peaks}, each keyed by side name."""
    children, described, failed = {}, {}, {}
    for name in wanted:
        if name in NUMGPT_SIDES:
            argv = me + ["--child", "numgpt", "--precision", PRECISIONS.get(name, "32-true")]
            env = dict(os.environ, NUMGPT_KERNELS=NUMGPT_SIDES[name])
        else:
            argv = torch_me + ["--child", "torch", "--variant", name]
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=inductor_cache) if name == "compile" else None
        try:
            child = Child(argv, env)
        except RuntimeError as error:
            failed[name] = str(error)
            continue
        if "error" in child.first:
            failed[name] = child.first["error"]
            child.process.wait()
            continue
        if name in NUMGPT_SIDES and child.first["kernels"] != NUMGPT_SIDES[name]:
            sys.exit(f"side {name} runs numgpt's {child.first['kernels']} kernels, not {NUMGPT_SIDES[name]}")
        children[name], described[name] = child, child.first
    steps = alternate(children, n_steps, log=True)                  # warm-up: compile's compile time
    peaks = {name: child.ask("peak")["peak_mb"] for name, child in children.items()}   # the steps' own peaks
    generation = {name: children[name].ask("generate") for name in ("numgpt", "bf16", "torch") if name in children}
    for child in children.values():
        child.close()
    return {**steps, "failed": {**failed, **steps["failed"]}, "described": described, "generation": generation,
            "peaks": peaks}


def render(args, setup, torch_version, torch_missing, first, cached, check, sgemm, products, steps, scale_rows,
           load_before, load_after):
    flops = step_flops(setup.cfg, setup.batch, setup.seq)
    ceiling = max(sgemm.values())
    tokens = setup.batch * setup.seq
    times, peaks, described = steps["times"], steps["peaks"], steps["described"]
    medians = {name: statistics.median(t) for name, t in times.items()}
    numgpt, eager = medians.get("numgpt"), medians.get("torch")
    lines = ["# numgpt vs PyTorch: the seed's training step",
             "",
             f"Machine: {machine_description(torch_version)}.",
             f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after: the machine is shared, "
             f"so the steps alternate and only the ratio in one run is meaningful.",
             "",
             f"Step: {setup.name}, batch {setup.batch} x {setup.seq}, dropout {setup.cfg['drop_rate']}, AdamW; "
             f"{args.steps} timed steps per side (after one warm-up), alternating. FLOPs per step "
             f"{flops / 1e9:.3g} G (6 * P_mm * B*T + 12 * L * B * T^2 * C, every side). sgemm ceiling "
             f"{ceiling:.0f} GFLOP/s: the best {setup.sgemm_n}^3 float32 product this run "
             f"({', '.join(f'{name} {rate:.0f}' for name, rate in sgemm.items())}).",
             "",
             ("| side | median ms/step | tokens/s | GFLOP/s | of sgemm ceiling | peak memory "
              "| time / PyTorch eager | numgpt time / this |"),
             "|---|---|---|---|---|---|---|---|"]
    for name, median in medians.items():
        label = SIDES[name] + (f" [kernel: {described[name]['attention']}]" if name in ("sdpa", "flash") else "")
        lines.append(f"| {label} | {median * 1e3:.0f} | {tokens / median:.0f} | {flops / median / 1e9:.0f} | "
                     f"{flops / median / 1e9 / ceiling:.0%} | {peaks[name] / 1024:.2f} GB | "
                     f"{f'{median / eager:.2f}' if eager else '-'} | {f'{numgpt / median:.2f}' if numgpt else '-'} |")
    if numgpt and eager:
        lines += ["", f"**numgpt / PyTorch eager: time {numgpt / eager:.2f}, "
                      f"peak memory {peaks['numgpt'] / peaks['torch']:.2f}** (issue 15 targets: <= 0.30 and <= 0.6)."]
        causal_flops = causal_step_flops(setup.cfg, setup.batch, setup.seq)
        products_floor = causal_flops / (ceiling * 1e9)
        state_bytes = 16 * parameter_count(setup.cfg)
        lines += ["", f"What bounds them: numgpt's matrix products alone ({causal_flops / 1e9:.3g} GFLOP, "
                      f"attention's masked half skipped) take {products_floor * 1e3:.0f} "
                      f"ms at this run's sgemm ceiling, {products_floor / eager:.2f} x PyTorch eager's step; "
                      f"numgpt's step is {numgpt / products_floor:.2f} x that floor. The weights, their gradients "
                      f"and AdamW's two moments, all alive at optimizer.step(), are {state_bytes / 2 ** 30:.2f} GB "
                      f"({state_bytes / 2 ** 20 / peaks['torch']:.2f} x PyTorch's peak), "
                      f"before any activation or the runtime."]
    if "compile" in medians:
        lines += ["", (f"torch.compile: the first step took {steps['first_step']['compile']:.1f} s (inductor "
                       "compiling forward and backward into an empty cache, plus one step); the table times the "
                       "steps after it.")]
    for name, reason in steps["failed"].items():
        lines += ["", f"Not timed: {SIDES[name]}: {reason}"]
    if torch_missing:
        lines += ["", torch_missing]
    lines += render_targets(medians, steps["generation"])
    lines += ["", "Per-step times (ms): " + "; ".join(
        f"{name} " + ", ".join(f"{t * 1e3:.0f}" for t in ts) for name, ts in times.items()),
        "",
        "First-step losses (same seed; dropout masks differ between libraries and attention kernels): "
        + "; ".join(f"{name} {ls[0]:.4f}" for name, ls in steps["losses"].items()),
        "",
        f"Kernels: numba vs NumPy losses agree before timing (worst relative difference {check['worst_rel']:.1e}); "
        + (f"compile {first:.1f} s on a first run, {cached:.2f} s from the cache." if first is not None else
         "compile time not measured (--no-compile-time)."),
        "",
        f"Greedy generation, {setup.name}, {GEN_NEW_TOKENS} new tokens after a {len(GEN_PROMPT)}-token prompt:",
        "",
        "| side | tokens/s |",
        "|---|---|"]
    labels = {"numgpt": "numgpt generate_text_simple (KV cache)",
              "bf16": "numgpt generate_text_simple, bf16-true weights (KV cache)",
              "torch": "PyTorch, the seed's generate_text_simple (no cache)",
              "transformers": "Hugging Face transformers GPT2LMHeadModel.generate (KV cache)"}
    generation = steps["generation"]
    for name, reply in generation.items():
        version = f" {reply['version']}" if "version" in reply else ""
        lines.append(f"| {labels[name]}{version} | {reply['tokens_per_s']:.1f} |")
    lines.append("")
    if "transformers" in generation and "numgpt" in generation:
        ratio = generation["numgpt"]["tokens_per_s"] / generation["transformers"]["tokens_per_s"]
        lines.append(f"**numgpt / transformers generation: {ratio:.2f}x** (target >= 1.5).")
    elif "transformers" not in generation:
        lines.append("Hugging Face transformers is not installed in the reference environment: no row for it.")
    names = [name for name in products if name != "labels"]
    lines += ["", f"The step's matrix products (batch {setup.batch} x {setup.seq}), GFLOP/s, best of 3 each; numgpt's "
                  "numba mode runs each on its kernel or the BLAS, whichever its measured choice for the shape "
                  "class says (kernels/matmul_choice.py; without the kernel's column, this CPU has no AVX-512 and "
                  "every product goes to the BLAS):", "",
              "| product | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, label in enumerate(products["labels"]):
        lines.append(f"| {label} | " + " | ".join(f"{products[name][i]:.0f}" for name in names) + " |")
    if scale_rows:
        lines += render_scale(scale_rows)
    return "\n".join(lines) + "\n"


def render_targets(medians, generation=None):
    """Issue 24's targets, each with the CPU's bf16 path and this run's figure where it measured one
    (``generation``: tokens/s replies by side, as time_sides gives them)."""
    path = bf16_path()
    rates = {name: reply["tokens_per_s"] for name, reply in (generation or {}).items() if "tokens_per_s" in reply}

    def speedup(other):
        if "bf16" in rates and other in rates:
            return rates["bf16"] / rates[other], f"{rates['bf16']:.1f} / {rates[other]:.1f} tokens/s"
        return None, f"needs the generation of bf16 and {other}"

    def ratio(side, other):
        if side in medians and other in medians:
            return medians[side] / medians[other], f"{medians[side] * 1e3:.0f} / {medians[other] * 1e3:.0f} ms"
        return None, f"needs the sides {side} and {other}"

    elsewhere = "measured by benchmarks/{}"
    return ["", f"Issue 24's targets (this CPU's bf16 path: {path}):", "",
            target_line("seed step, numgpt bf16-mixed / PyTorch eager float32 <= 0.20 (a CPU with AMX)",
                        *ratio("bf16", "torch"), 0.20),
            target_line("seed step, numgpt bf16-mixed / PyTorch under bf16 autocast <= 0.50 (a CPU with AMX)",
                        *ratio("bf16", "autocast"), 0.50),
            target_line("seed step, numgpt bf16-mixed / numgpt float32 <= 0.65 (a CPU with AVX512_BF16 only)",
                        *ratio("bf16", "numgpt"), 0.65),
            target_line("seed step, numgpt 32-true / PyTorch eager float32 <= 0.60 (every CPU)",
                        *ratio("numgpt", "torch"), 0.60),
            target_line("numgpt's bf16 kernel / oneDNN through PyTorch on the seed's product shapes >= 0.8", None,
                        elsewhere.format("bench_bf16_gemm.py"), 0.8),
            target_line("the seed's full run in bf16-mixed / PyTorch float32 wall time <= 0.25", None,
                        elsewhere.format("bench_full_run.py"), 0.25),
            target_line("greedy generation, numgpt bf16-true / numgpt float32 >= 1.6", *speedup("numgpt"), 1.6,
                        at_most=False),
            target_line("greedy generation, numgpt bf16-true / transformers float32 >= 2.0",
                        *speedup("transformers"), 2.0, at_most=False),
            target_line("SmolLM2-135M step bf16-mixed <= 0.50 x transformers float32, <= 1.0 x under autocast",
                        None, elsewhere.format("bench_llama.py (bench_step.py --model smollm2-135m)"), 0.5)]


def render_scale(scale_rows):
    """The --scale table: numgpt and PyTorch per (context, batch, precision), a skipped shape says why."""
    def cells(reply, context):
        if reply is None:
            return ["", "", ""]
        if "skipped" in reply:
            return [f"skipped: {reply['skipped']}", "", ""]
        peak = f"{reply['peak_mb'] / 1024:.2f} GB"
        if "estimate_mb" in reply:                                  # numgpt: its own estimate beside the peak
            peak += f" (est. {reply['estimate_mb'] / 1024:.2f})"
        return [f"{reply['seconds'] * 1e3:.0f}", f"{reply['batch'] * context / reply['seconds']:.0f}", peak]

    lines = ["", "## Scale (one timed step after a warm-up, one process per side and shape; report only)", "",
             "Precision 32-true: numgpt float32 against PyTorch eager float32; bf16-mixed: numgpt under "
             "numgpt.autocast against PyTorch eager under torch.autocast(\"cpu\", dtype=torch.bfloat16).", "",
             ("| context | batch | precision | numgpt ms/step | numgpt tokens/s "
              "| numgpt peak (estimate_training_bytes) | PyTorch ms/step | PyTorch tokens/s | PyTorch peak "
              "| numgpt time / PyTorch |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in scale_rows:
        ours, theirs = row["numgpt"], row.get("torch")
        both = "seconds" in ours and theirs is not None and "seconds" in theirs
        ratio = f"{ours['seconds'] / theirs['seconds']:.2f}" if both else ""
        lines.append(f"| {row['context']} | {row['batch']} | {row['precision']} | " + " | ".join(
            cells(ours, row["context"]) + cells(theirs, row["context"]) + [ratio]) + " |")
    return lines


if __name__ == "__main__":
    main()
