"""numgpt against Hugging Face transformers on a Llama-family model, in one run.

    python benchmarks/bench_step.py --model smollm2-135m --out benchmarks/results-smollm2.md

(bench_step.py hands ``--model`` here.) The step: SmolLM2-135M's shape
(numgpt.models.llama.PRESETS: 30 layers, hidden 576, 9 heads with 3 key/value heads,
vocab 49152, tied head), batch 2 x 256 random tokens, float32, zero_grad,
forward, mean cross-entropy, backward, AdamW(lr 4e-4, weight_decay 0.1).

How it measures (as bench_step.py does for GPT-2):
- each side runs in its own resident process; the parent asks them for one
  step at a time, alternating, so that both see the same machine load; each
  side's peak memory is its own ru_maxrss after the steps;
- transformers is ``LlamaForCausalLM`` built from the same config,
  ``attn_implementation="eager"``, float32, torch.set_num_threads(2), run by
  ``--torch-python`` (default: the interpreter running the benchmark); a
  second transformers side runs the same step with the forward and the loss
  under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
- generation: greedy, 50 new tokens after a 4-token prompt, eval mode, each
  with its KV cache: numgpt's ``generate`` against transformers' ``generate``
  (min_new_tokens = max_new_tokens = 50, so neither stops early);
- FLOPs per step, counted analytically: 6 * P_mm * B*T + 12 * L * B * T^2 * NH * HS
  (P_mm: the weights of every matrix product, the head included).
"""
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

from common import Child, alternate, machine_description, peak_mb, reference_side, write_report

HERE = Path(__file__).resolve()

BATCH, SEQ = 2, 256
LR, WEIGHT_DECAY = 4e-4, 0.1
SEED = 123
GEN_NEW_TOKENS, GEN_PROMPT = 50, [1, 422, 3405, 2]
AUTOCAST = "transformers, bf16 autocast"


def preset(name):
    """The preset's config, from numgpt (in the parent: the transformers child gets it as JSON and never has
    the repository on sys.path, where transformers' ``import kernels`` would find numgpt's kernels/)."""
    from numgpt.models.llama_config import PRESETS
    return PRESETS[name]


def step_flops(cfg, batch, seq):
    from numgpt.models.llama_config import count_parameters
    C, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    norms = L * 2 * C + C + L * 2 * cfg["head_dim"] * cfg["qk_norm"]
    lookup_only = 0 if cfg["tie_word_embeddings"] else cfg["vocab_size"] * C    # an untied table is only looked up
    p_mm = count_parameters(cfg) - norms - lookup_only
    return 6 * p_mm * batch * seq + 12 * L * batch * seq * seq * cfg["num_attention_heads"] * cfg["head_dim"]


def batch_of(cfg, batch, seq, seed=0):
    import numpy
    rng = numpy.random.default_rng(seed)
    return (rng.integers(0, cfg["vocab_size"], (batch, seq)), rng.integers(0, cfg["vocab_size"], (batch, seq)))


class NumgptSide:
    def __init__(self, cfg):
        import numgpt
        numgpt.manual_seed(SEED)
        self.numgpt = numgpt
        self.model = numgpt.LlamaForCausalLM(cfg).train()
        self.optimizer = numgpt.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.x, self.y = batch_of(cfg, BATCH, SEQ)

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
        self.model.eval()
        idx = numpy.array([GEN_PROMPT])
        context = self.model.cfg["context_length"]
        self.numgpt.generate(self.model, idx, 5, context)                                 # warm-up
        start = time.perf_counter()
        out = self.numgpt.generate(self.model, idx, GEN_NEW_TOKENS, context)
        seconds = time.perf_counter() - start
        self.model.train()
        return GEN_NEW_TOKENS / seconds, [int(t) for t in out[0, -GEN_NEW_TOKENS:]]


class TransformersSide:
    """transformers' LlamaForCausalLM; ``autocast``: the forward and the loss under bf16 autocast."""

    def __init__(self, cfg, autocast=False):
        import torch
        import transformers
        self.autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast
                         else contextlib.nullcontext)
        torch.set_num_threads(2)
        torch.manual_seed(SEED)
        self.torch = torch
        rope = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
        config = transformers.LlamaConfig(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg["num_key_value_heads"], rms_norm_eps=cfg["rms_norm_eps"],
            max_position_embeddings=cfg["max_position_embeddings"], tie_word_embeddings=cfg["tie_word_embeddings"],
            rope_parameters=rope, rope_theta=cfg["rope_theta"], bos_token_id=cfg["bos_token_id"],
            eos_token_id=cfg["eos_token_id"], attn_implementation="eager")
        self.model = transformers.LlamaForCausalLM(config).float().train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        x, y = batch_of(cfg, BATCH, SEQ)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.version = transformers.__version__

    def step(self):
        start = time.perf_counter()
        self.optimizer.zero_grad()
        with self.autocast():
            logits = self.model(self.x).logits
            loss = self.torch.nn.functional.cross_entropy(logits.flatten(0, 1), self.y.flatten())
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start, loss.item()

    def generate(self):
        self.model.eval()
        idx = self.torch.tensor([GEN_PROMPT])
        options = dict(do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
        with self.torch.no_grad():
            self.model.generate(idx, max_new_tokens=5, min_new_tokens=5, **options)       # warm-up
            start = time.perf_counter()
            out = self.model.generate(idx, max_new_tokens=GEN_NEW_TOKENS, min_new_tokens=GEN_NEW_TOKENS, **options)
            seconds = time.perf_counter() - start
        self.model.train()
        return GEN_NEW_TOKENS / seconds, out[0, -GEN_NEW_TOKENS:].tolist()


def serve(side_name, cfg):
    side = NumgptSide(cfg) if side_name == "numgpt" else TransformersSide(cfg, autocast=side_name == AUTOCAST)
    print(json.dumps({"ready": True, "peak_mb": peak_mb(), "version": getattr(side, "version", None)}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            seconds, loss = side.step()
            reply = {"seconds": seconds, "loss": loss}
        elif command == "generate":
            tokens_per_s, tokens = side.generate()
            reply = {"tokens_per_s": tokens_per_s, "tokens": tokens}
        else:
            print(json.dumps({"peak_mb": peak_mb()}), flush=True)
            return
        print(json.dumps(reply), flush=True)


def run(args):
    """The parent: every side, alternating; returns the Markdown report."""
    cfg = preset(args.model)
    config = json.dumps(cfg)
    sides = {"numgpt": Child([sys.executable, str(HERE), "--child", "numgpt", "--config", config])}
    torch_version, torch_missing = reference_side(args.torch_python, needs=("torch", "transformers"))
    if torch_version:
        for name in ("transformers", AUTOCAST):
            sides[name] = Child([args.torch_python, str(HERE), "--child", name, "--config", config])
    steps = alternate(sides, args.steps)
    if steps["failed"]:
        sys.exit(f"a side failed: {steps['failed']}")
    times, losses = steps["times"], steps["losses"]
    generation = {name: side.ask("generate") for name, side in sides.items()}
    peaks = {name: side.close()["peak_mb"] for name, side in sides.items()}
    flops = step_flops(cfg, BATCH, SEQ)
    median = {name: statistics.median(values) for name, values in times.items()}
    lines = [f"# numgpt vs transformers: {args.model} training step and generation", "",
             machine_description(torch_version), "",
             f"Step: {args.model} shape (numgpt.models.llama.PRESETS), batch {BATCH} x {SEQ}, float32 "
             f"(and transformers under torch.autocast(\"cpu\", dtype=torch.bfloat16)), AdamW; "
             f"{flops / 1e9:.0f} GFLOP per step "
             f"(matrix products). {args.steps} timed steps per side after one warm-up, alternating.", "",
             "| side | median step | GFLOP/s | peak memory | generation (tokens/s) |", "|---|---|---|---|---|"]
    for name in sides:
        lines.append(f"| {name} | {median[name] * 1000:.0f} ms | {flops / median[name] / 1e9:.0f} | "
                     f"{peaks[name]:.0f} MB | {generation[name]['tokens_per_s']:.1f} |")
    if torch_missing:
        lines += ["", torch_missing]
    else:
        lines += ["", f"- step time ratio numgpt / transformers: **{median['numgpt'] / median['transformers']:.2f}** "
                      f"(target <= 0.5)",
                  f"- step time ratio numgpt / transformers under bf16 autocast: "
                  f"**{median['numgpt'] / median[AUTOCAST]:.2f}**",
                  f"- peak memory ratio: **{peaks['numgpt'] / peaks['transformers']:.2f}** (target <= 0.8)",
                  f"- generation speed ratio numgpt / transformers: "
                  f"**{generation['numgpt']['tokens_per_s'] / generation['transformers']['tokens_per_s']:.2f}** "
                  f"(target >= 1.5; both float32: generation runs outside autocast)",
                  "- step times (s): " + "; ".join(f"{name} " + ", ".join(f"{t:.2f}" for t in times[name])
                                                    for name in sides),
                  "- first losses: " + "; ".join(f"{name} {losses[name][0]:.4f}" for name in sides)
                  + " (random weights of each library's own init: not expected to agree)"]
    return "\n".join(lines) + "\n"


def main(args):
    write_report(run(args), args.out)
    return 0


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("--config", required=True, help="the model config, JSON")
    options = parser.parse_args()
    serve(options.child, json.loads(options.config))
