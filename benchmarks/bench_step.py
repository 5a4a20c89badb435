"""numgpt against PyTorch on the seed's training step, in one run.

    python benchmarks/bench_step.py --out benchmarks/results.md
    python benchmarks/bench_step.py --scale --out benchmarks/results.md   # + step time by context and batch
    python benchmarks/bench_step.py --model smollm2-135m --out benchmarks/results-smollm2.md   # vs transformers

The step is the seed's: GPT_CONFIG_124M (context 256, 12 layers, 768 wide,
dropout 0.1, untied head), batch 2 x 256 random tokens, zero_grad, forward,
mean cross-entropy, backward, AdamW(lr 4e-4, weight_decay 0.1).

How it measures:
- numgpt and PyTorch each run in their own process and stay resident; the
  parent asks them for one step at a time, alternating, so that both see the
  same machine load; each side's peak memory is its own ru_maxrss.
- PyTorch is ``llms_from_scratch.ch04.GPTModel`` with torch.set_num_threads(2),
  run by the interpreter ``--torch-python`` (default /work/refenv/bin/python);
  without it, numgpt runs alone.
- Before anything is timed, a separate process runs one step from the same
  seed with the numba kernels and with the NumPy path and checks that both
  losses (before and after the AdamW update) agree.
- FLOPs per step, counted analytically (dense attention, as PyTorch computes it):
      6 * P_mm * B*T  +  12 * L * B * T^2 * C,
  P_mm = L * 12 * C^2 + C * V, the weights of every matrix product (biases,
  LayerNorm and the embedding lookups excluded); 394 GFLOP for the seed's step.
- The sgemm ceiling is the best of a few (4096 x 4096) @ (4096 x 4096) float32
  products, by NumPy's BLAS and by numgpt's matmul kernel, measured in the
  same run (before and after the steps).
- Kernel compile time: the kernels compiled into an empty cache directory
  (first run) and loaded from it (later runs), each in a fresh process.
- Generation: greedy, 50 new tokens after a 4-token prompt, 124M shape, eval
  mode: numgpt's generate_text_simple (KV cache) against the seed's cache-less
  torch loop (``llms_from_scratch.ch04.generate_text_simple``).
"""
import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
DEFAULT_TORCH_PYTHON = "/work/refenv/bin/python"
CONFIG = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
          "drop_rate": 0.1, "qkv_bias": False}
BATCH, SEQ = 2, 256
LR, WEIGHT_DECAY = 4e-4, 0.1
SEED = 123
GEN_NEW_TOKENS, GEN_PROMPT = 50, [6109, 3626, 6100, 345]     # "Every effort moves you"
SCALE_CONTEXTS, SCALE_BATCHES = (256, 512, 1024), (1, 2, 4, 8)
AGREEMENT_RTOL = 1e-4                                        # numba vs NumPy loss, float32


def step_flops(cfg, batch, seq):
    """6 * P_mm * tokens + 12 * L * B * T^2 * C (see the module docstring)."""
    C, L, V = cfg["emb_dim"], cfg["n_layers"], cfg["vocab_size"]
    p_mm = L * 12 * C * C + C * V
    return 6 * p_mm * batch * seq + 12 * L * batch * seq * seq * C


def batch_of(cfg, batch, seq, seed=0):
    import numpy
    rng = numpy.random.default_rng(seed)
    return (rng.integers(0, cfg["vocab_size"], (batch, seq)), rng.integers(0, cfg["vocab_size"], (batch, seq)))


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ the two sides (child processes)

class NumgptSide:
    def __init__(self, cfg, batch, seq):
        import numgpt
        from numgpt.model import GPTModel
        numgpt.manual_seed(SEED)
        self.numgpt = numgpt
        self.model = GPTModel(cfg)
        self.model.train()
        self.optimizer = numgpt.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.x, self.y = batch_of(cfg, batch, seq)
        self.cfg = cfg

    def step(self):
        start = time.perf_counter()
        self.optimizer.zero_grad()
        logits = self.model(self.x)
        loss = self.numgpt.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.y.reshape(-1))
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start, loss.item()

    def generate(self):
        import numpy
        from numgpt.generate import generate_text_simple
        self.model.eval()
        idx = numpy.array([GEN_PROMPT])
        generate_text_simple(self.model, idx, 5, self.cfg["context_length"])          # warm-up
        start = time.perf_counter()
        out = generate_text_simple(self.model, idx, GEN_NEW_TOKENS, self.cfg["context_length"])
        seconds = time.perf_counter() - start
        self.model.train()
        return GEN_NEW_TOKENS / seconds, [int(t) for t in out[0, -GEN_NEW_TOKENS:]]


class TorchSide:
    def __init__(self, cfg, batch, seq):
        import torch
        from llms_from_scratch.ch04 import GPTModel
        torch.set_num_threads(2)
        torch.manual_seed(SEED)
        self.torch = torch
        self.model = GPTModel(cfg)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        x, y = batch_of(cfg, batch, seq)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.cfg = cfg

    def step(self):
        start = time.perf_counter()
        self.optimizer.zero_grad()
        logits = self.model(self.x)
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


def serve(side_name, cfg, batch, seq):
    """Child loop: one JSON line per command read from stdin."""
    side = (NumgptSide if side_name == "numgpt" else TorchSide)(cfg, batch, seq)
    print(json.dumps({"ready": True, "peak_mb": peak_mb()}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            seconds, loss = side.step()
            reply = {"seconds": seconds, "loss": loss}
        elif command == "generate":
            tokens_per_s, tokens = side.generate()
            reply = {"tokens_per_s": tokens_per_s, "tokens": tokens}
        elif command == "exit":
            print(json.dumps({"peak_mb": peak_mb()}), flush=True)
            return
        else:
            reply = {"error": f"unknown command {command!r}"}
        print(json.dumps(reply), flush=True)


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


def scale_child(context, batch, steps, budget_bytes):
    """numgpt's median step time at one context length and batch size (one process each, so the peak is its own)."""
    from numgpt.train import estimate_training_bytes
    cfg = dict(CONFIG, context_length=context)
    estimate = estimate_training_bytes(cfg, batch, context)
    if estimate > budget_bytes:
        print(json.dumps({"batch": batch, "skipped": f"estimated {estimate / 2**30:.1f} GiB"}), flush=True)
        return
    side = NumgptSide(cfg, batch, context)
    side.step()                                                     # warm-up
    times = [side.step()[0] for _ in range(steps)]
    print(json.dumps({"batch": batch, "seconds": statistics.median(times), "peak_mb": peak_mb()}), flush=True)


# ------------------------------------------------------------------ the parent

class Child:
    def __init__(self, argv, env=None):
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=env, bufsize=1)
        self.first = self.read()

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.process.args} ended (exit code {self.process.wait()})")
        return json.loads(line)

    def ask(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self):
        reply = self.ask("exit")
        self.process.wait()
        return reply


def run_json(argv, env=None):
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def product_rates(operands, repeats=3):
    """GFLOP/s of each (a, b) product in ``operands`` (best of ``repeats``), by NumPy's BLAS and
    by numgpt's matmul kernel where it takes the product: {name: [rate per product]}."""
    import numpy
    from numgpt.kernels import matmul as kernel
    products = {"NumPy's BLAS": numpy.matmul}
    if all(kernel.kernel_operands(a, b) is not None for a, b in operands):
        products["numgpt's kernel"] = kernel.matmul
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


def openblas_corename():
    """The kernel family ('Haswell', 'SkylakeX', ...) the OpenBLAS mapped into this process runs, or '?'."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return "?"
    for path in paths:
        library = ctypes.CDLL(path)
        for symbol in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
            getter = getattr(library, symbol, None)
            if getter is not None:
                getter.restype = ctypes.c_char_p
                return getter().decode()
    return "?"


def openblas_kernels():
    """Which kernel family OpenBLAS runs, and who chose it: OPENBLAS_CORETYPE in
    the environment overrides OpenBLAS's own CPU check (this project's machine
    pins Haswell, AVX2, on an AVX-512 CPU)."""
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    return f"OpenBLAS kernels {openblas_corename()} " + (
        f"(OPENBLAS_CORETYPE={pinned} set in the environment)" if pinned else "(OpenBLAS's own choice)")


def machine_description(torch_version):
    import numba
    import numpy
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "")
    blas = numpy.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return (f"{cpu} ({simd}), {os.cpu_count()} cores, {platform.system()} {platform.machine()}; Python "
            f"{platform.python_version()}, NumPy {numpy.__version__} ({blas.get('name', '?')} "
            f"{blas.get('version', '')}; {openblas_kernels()}), numba {numba.__version__}, "
            f"torch {torch_version or 'not installed'}")


def torch_version_of(python):
    if not python or not Path(python).exists():
        return None
    try:
        out = subprocess.run([python, "-c", "import torch, llms_from_scratch; print(torch.__version__)"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the Markdown report here (and print it)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side (after one warm-up step)")
    parser.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON)
    parser.add_argument("--scale", action="store_true", help="also time numgpt at context 256/512/1024, batch 1..8")
    parser.add_argument("--scale-budget-gib", type=float, default=12.0,
                        help="skip scale configurations whose estimated memory exceeds this")
    parser.add_argument("--model", help="a Llama-family preset (smollm2-135m, ...): numgpt against transformers' "
                                        "LlamaForCausalLM instead (benchmarks/bench_llama.py)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--context", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model:
        import bench_llama
        return bench_llama.main(args)

    if args.child in ("numgpt", "torch"):
        return serve(args.child, CONFIG, BATCH, SEQ)
    if args.child == "check":
        return check_agreement(CONFIG, BATCH, SEQ)
    if args.child == "compile":
        return compile_time()
    if args.child == "hf-generate":
        return hf_generate(CONFIG)
    if args.child == "scale":
        return scale_child(args.context, args.batch, max(1, args.steps), args.scale_budget_gib * 2 ** 30)

    me = [sys.executable, str(HERE)]
    load_before = os.getloadavg()
    torch_version = torch_version_of(args.torch_python)

    # 1. kernel compile time: an empty cache, then the cache it filled
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
    sgemm = sgemm_ceiling()
    labelled = step_products(CONFIG, BATCH, SEQ)
    products = {"labels": [label for label, _, _ in labelled],
                **product_rates([(a, b) for _, a, b in labelled])}
    del labelled

    # 4. alternate steps
    sides = {"numgpt": Child(me + ["--child", "numgpt"])}
    if torch_version:
        sides["PyTorch"] = Child([args.torch_python, str(HERE), "--child", "torch"])
    times = {name: [] for name in sides}
    losses = {name: [] for name in sides}
    for i in range(args.steps + 1):
        for name, child in sides.items():
            reply = child.ask("step")
            if i > 0:                                               # step 0 warms up
                times[name].append(reply["seconds"])
            losses[name].append(reply["loss"])
            print(f"step {i} {name}: {reply['seconds'] * 1e3:.0f} ms, loss {reply['loss']:.4f}", file=sys.stderr)
    generation = {name: child.ask("generate") for name, child in sides.items()}
    peaks = {name: child.close()["peak_mb"] for name, child in sides.items()}
    sgemm = {name: max(rate, sgemm[name]) for name, rate in sgemm_ceiling().items()}
    if torch_version:
        try:
            generation["transformers"] = run_json([args.torch_python, str(HERE), "--child", "hf-generate"])[-1]
        except subprocess.CalledProcessError as error:
            print(f"no Hugging Face row: {error.stderr.strip().splitlines()[-1:]}", file=sys.stderr)

    # 5. scale
    scale_rows = []
    if args.scale:
        for context in SCALE_CONTEXTS:
            for batch in SCALE_BATCHES:
                reply = run_json(me + ["--child", "scale", "--context", str(context), "--batch", str(batch),
                                       "--steps", "1", "--scale-budget-gib", str(args.scale_budget_gib)])[-1]
                scale_rows.append((context, reply))
                print(f"scale T={context}: {reply}", file=sys.stderr)

    report = render(args, torch_version, first, cached, check, sgemm, products, times, peaks, generation, scale_rows,
                    load_before, os.getloadavg())
    print(report)
    if args.out:
        args.out.write_text(report)


def render(args, torch_version, first, cached, check, sgemm, products, times, peaks, generation, scale_rows,
           load_before, load_after):
    flops = step_flops(CONFIG, BATCH, SEQ)
    ceiling = max(sgemm.values())
    tokens = BATCH * SEQ
    lines = ["# numgpt vs PyTorch: the seed's training step",
             "",
             f"Machine: {machine_description(torch_version)}.",
             f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after: the machine is shared, "
             f"so the steps alternate and only the ratio in one run is meaningful.",
             "",
             f"Step: GPT_CONFIG_124M, batch {BATCH} x {SEQ}, dropout 0.1, AdamW; {args.steps} timed steps per side "
             f"(after one warm-up), alternating. FLOPs per step {flops / 1e9:.0f} G "
             f"(6 * P_mm * B*T + 12 * L * B * T^2 * C). sgemm ceiling {ceiling:.0f} GFLOP/s: the best 4096^3 "
             f"float32 product this run ({', '.join(f'{name} {rate:.0f}' for name, rate in sgemm.items())}).",
             "",
             "| side | median ms/step | tokens/s | GFLOP/s | of sgemm ceiling | peak memory |",
             "|---|---|---|---|---|---|"]
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        lines.append(f"| {name} | {median * 1e3:.0f} | {tokens / median:.0f} | {flops / median / 1e9:.0f} | "
                     f"{flops / median / 1e9 / ceiling:.0%} | {peaks[name] / 1024:.2f} GB |")
    if "PyTorch" in medians:
        lines += ["", f"**numgpt / PyTorch: time {medians['numgpt'] / medians['PyTorch']:.2f}, "
                      f"peak memory {peaks['numgpt'] / peaks['PyTorch']:.2f}** (targets: <= 0.6 and <= 0.75)."]
    lines += ["", "Per-step times (ms): " + "; ".join(
        f"{name} " + ", ".join(f"{t * 1e3:.0f}" for t in ts) for name, ts in times.items()),
        "",
        f"Kernels: numba vs NumPy losses agree before timing (worst relative difference {check['worst_rel']:.1e}); "
        f"compile {first:.1f} s on a first run, {cached:.2f} s from the cache (targets 15 s and 3 s).",
        "",
        f"Greedy generation, 124M shape, {GEN_NEW_TOKENS} new tokens after a {len(GEN_PROMPT)}-token prompt:",
        "",
        "| side | tokens/s |",
        "|---|---|"]
    labels = {"numgpt": "numgpt generate_text_simple (KV cache)",
              "PyTorch": "PyTorch, the seed's generate_text_simple (no cache)",
              "transformers": "Hugging Face transformers GPT2LMHeadModel.generate (KV cache)"}
    for name, reply in generation.items():
        version = f" {reply['version']}" if "version" in reply else ""
        lines.append(f"| {labels[name]}{version} | {reply['tokens_per_s']:.1f} |")
    lines.append("")
    if "transformers" in generation:
        ratio = generation["numgpt"]["tokens_per_s"] / generation["transformers"]["tokens_per_s"]
        lines.append(f"**numgpt / transformers generation: {ratio:.2f}x** (target >= 1.5).")
    else:
        lines.append("Hugging Face transformers is not installed in the reference environment: no row for it.")
    names = [name for name in products if name != "labels"]
    lines += ["", f"The step's matrix products (batch {BATCH} x {SEQ}), GFLOP/s, best of 3 each; numgpt's numba mode "
                  "runs them all on its kernel when the kernel's column is present:", "",
              "| product | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, label in enumerate(products["labels"]):
        lines.append(f"| {label} | " + " | ".join(f"{products[name][i]:.0f}" for name in names) + " |")
    if scale_rows:
        lines += ["", "## Scale (numgpt, one timed step after a warm-up; report only)", "",
                  "| context | batch | ms/step | tokens/s | peak memory |", "|---|---|---|---|---|"]
        for context, reply in scale_rows:
            if "skipped" in reply:
                lines.append(f"| {context} | {reply['batch']} | skipped: {reply['skipped']} | | |")
            else:
                lines.append(f"| {context} | {reply['batch']} | {reply['seconds'] * 1e3:.0f} | "
                             f"{reply['batch'] * context / reply['seconds']:.0f} | {reply['peak_mb'] / 1024:.2f} GB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
