"""Write the PyTorch reference fixtures that tests/test_reference.py reads with NumPy alone.

Needs torch, so it runs in the reference venv, never in numgpt's own environment:

    python3 -m venv /work/refenv
    /work/refenv/bin/pip install torch==2.13.0 safetensors numpy tiktoken
    /work/refenv/bin/pip install --no-deps llms-from-scratch
    /work/refenv/bin/python tests/reference/make_reference.py

It writes, next to this file:
    gpt_tiny_qkv_bias.safetensors     llms_from_scratch.ch04.GPTModel, qkv_bias=True
    gpt_tiny_no_qkv_bias.safetensors  the same with qkv_bias=False
    cross_entropy.safetensors         the standalone loss on random logits

Each GPT fixture holds (B = 2, T = 8, V = vocab_size):
    param.<key>        every state_dict tensor except the *.att.mask buffers
    input_ids          (B, T) int64
    target_ids         (B, T) int64, one entry is IGNORE_INDEX
    logits             (B, T, V) float32
    loss               () float32, mean cross-entropy over the non-ignored targets
    grad.<key>         d loss / d param.<key>
    adamw.loss.<s>     () the loss computed before AdamW step s, s = 0 .. ADAMW_STEPS - 1
    adamw.param.<key>  the weights after ADAMW_STEPS steps on the same batch
and the safetensors metadata {"fixture_version", "torch", "config", "zero_grad"}:
"zero_grad" lists (JSON) the parameters whose exact gradient is zero (the key bias: softmax
ignores a shift shared by a whole row of scores), so that float32 holds only round-off there.

Bump FIXTURE_VERSION whenever the content or the layout changes; the tests expect it.
"""
import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from llms_from_scratch.ch04 import GPTModel

FIXTURE_VERSION = 1
SEED = 123
IGNORE_INDEX = -100
B, T = 2, 8
ADAMW_STEPS = 5
LR = 4e-4
WEIGHT_DECAY = 0.1
# The float32 reference must sit this close to a float64 run of the same computation
# (relative to each tensor's largest magnitude): a quarter of the tests' tightest tolerance
# (1e-5), so that a correct float32 implementation has room for its own round-off.
FLOAT32_FLOOR_MAX = 2.5e-6

HERE = Path(__file__).resolve().parent

TINY_CONFIG = {
    "vocab_size": 50,
    "context_length": T,
    "emb_dim": 16,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
}


def make_model_and_batch(cfg):
    """Seeded float32 GPTModel with LayerNorms moved off 1/0, and one (B, T) batch."""
    torch.manual_seed(SEED)
    model = GPTModel(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".scale"):  # LayerNorm: 1 -> 1 + small noise
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".shift"):  # LayerNorm: 0 -> small noise
                p.copy_(0.1 * torch.randn_like(p))
    input_ids = torch.randint(0, cfg["vocab_size"], (B, T), dtype=torch.int64)
    input_ids[1, 5] = input_ids[0, 2]  # a repeated token: its embedding gradient is a sum
    target_ids = torch.randint(0, cfg["vocab_size"], (B, T), dtype=torch.int64)
    target_ids[1, 3] = IGNORE_INDEX
    return model, input_ids, target_ids


def forward_loss(model, input_ids, target_ids):
    logits = model(input_ids)  # (B, T) -> (B, T, V)
    loss = torch.nn.functional.cross_entropy(  # (B*T, V), (B*T,) -> ()
        logits.flatten(0, 1), target_ids.flatten(), ignore_index=IGNORE_INDEX
    )
    return logits, loss


def run_adamw(model, input_ids, target_ids):
    """ADAMW_STEPS steps on one batch; returns the loss before each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    losses = []
    for _ in range(ADAMW_STEPS):
        optimizer.zero_grad()
        _, loss = forward_loss(model, input_ids, target_ids)
        loss.backward()
        losses.append(loss.detach().clone())
        optimizer.step()
    return losses


def reference_run(model, input_ids, target_ids):
    """Everything a fixture stores, computed in the model's own dtype."""
    out = {}
    start = copy.deepcopy(model)  # AdamW starts from the same weights
    for key, value in model.state_dict().items():
        if not key.endswith(".att.mask"):
            out[f"param.{key}"] = value
    logits, loss = forward_loss(model, input_ids, target_ids)
    loss.backward()
    out["logits"] = logits
    out["loss"] = loss
    for key, p in model.named_parameters():
        out[f"grad.{key}"] = p.grad
    for s, step_loss in enumerate(run_adamw(start, input_ids, target_ids)):
        out[f"adamw.loss.{s}"] = step_loss
    for key, p in start.named_parameters():
        out[f"adamw.param.{key}"] = p
    return {k: v.detach().contiguous() for k, v in out.items()}


def zero_gradient_keys(ref64):
    """Parameters whose float64 gradient is round-off only (exactly zero in exact arithmetic)."""
    largest = max(v.abs().max().item() for k, v in ref64.items() if k.startswith("grad."))
    return sorted(
        k[len("grad."):]
        for k, v in ref64.items()
        if k.startswith("grad.") and v.abs().max().item() <= 1e-12 * largest
    )


def float32_floor(ref32, ref64, zero_grad):
    """Worst float32-vs-float64 error per tensor, relative to the tensor's largest magnitude."""
    floor = {}
    for key, v64 in ref64.items():
        if key.startswith("param.") or any(key.endswith("." + z) for z in zero_grad):
            continue  # params are the same values; zero-gradient tensors are pure round-off
        err = (ref32[key].double() - v64).abs().max().item()
        floor[key] = err / max(v64.abs().max().item(), 1e-30)
    return floor


def gpt_fixture(cfg):
    model, input_ids, target_ids = make_model_and_batch(cfg)
    model64 = copy.deepcopy(model).double()
    ref32 = reference_run(model, input_ids, target_ids)
    ref64 = reference_run(model64, input_ids, target_ids)
    zero_grad = zero_gradient_keys(ref64)
    floor = float32_floor(ref32, ref64, zero_grad)
    worst_key = max(floor, key=floor.get)
    if floor[worst_key] > FLOAT32_FLOOR_MAX:
        raise SystemExit(
            f"ill-conditioned fixture: float32 vs float64 differ by {floor[worst_key]:.2e} "
            f"on {worst_key} (> {FLOAT32_FLOOR_MAX:.1e}); choose another SEED"
        )
    tensors = dict(ref32, input_ids=input_ids, target_ids=target_ids)
    extra = {"zero_grad": json.dumps(zero_grad)}
    summary = (
        f"loss {ref32['loss'].item():.6f}, adamw loss {ref32['adamw.loss.0'].item():.6f} -> "
        f"{ref32[f'adamw.loss.{ADAMW_STEPS - 1}'].item():.6f}, "
        f"float32 floor {floor[worst_key]:.1e} ({worst_key}), zero_grad {zero_grad}"
    )
    return tensors, extra, summary


def cross_entropy_fixture():
    N, V = 6, 11
    torch.manual_seed(SEED)
    logits = (2.0 * torch.randn(N, V, dtype=torch.float32)).requires_grad_(True)
    target_ids = torch.randint(0, V, (N,), dtype=torch.int64)
    target_ids[4] = IGNORE_INDEX
    loss = torch.nn.functional.cross_entropy(logits, target_ids, ignore_index=IGNORE_INDEX)
    loss.backward()
    tensors = {
        "logits": logits.detach().contiguous(),
        "target_ids": target_ids,
        "loss": loss.detach(),
        "dlogits": logits.grad.contiguous(),
    }
    config = {"N": N, "V": V, "ignore_index": IGNORE_INDEX}
    return tensors, config, f"loss {loss.item():.6f}"


def save(filename, tensors, config, extra=None):
    metadata = {
        "fixture_version": str(FIXTURE_VERSION),
        "torch": torch.__version__,
        "config": json.dumps(config, sort_keys=True),
        **(extra or {}),
    }
    path = HERE / filename
    save_file(tensors, str(path), metadata=metadata)
    return path


def main():
    torch.set_num_threads(1)  # tiny shapes; also keeps the reductions in one fixed order
    total = 0
    jobs = [
        ("gpt_tiny_qkv_bias.safetensors", dict(TINY_CONFIG, qkv_bias=True)),
        ("gpt_tiny_no_qkv_bias.safetensors", dict(TINY_CONFIG, qkv_bias=False)),
    ]
    for filename, cfg in jobs:
        tensors, extra, summary = gpt_fixture(cfg)
        path = save(filename, tensors, cfg, extra)
        total += path.stat().st_size
        print(f"{filename}: {len(tensors)} tensors, {path.stat().st_size / 1024:.1f} KiB, {summary}")
    tensors, config, summary = cross_entropy_fixture()
    path = save("cross_entropy.safetensors", tensors, config)
    total += path.stat().st_size
    print(f"cross_entropy.safetensors: {len(tensors)} tensors, {path.stat().st_size / 1024:.1f} KiB, {summary}")
    print(f"fixture_version {FIXTURE_VERSION}, torch {torch.__version__}, total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
