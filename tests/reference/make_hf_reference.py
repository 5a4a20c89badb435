"""Cross-check numgpt's GPT-2 loading and export against Hugging Face transformers itself.

Needs torch and transformers, so it runs in the reference venv, never in numgpt's own environment:

    /work/refenv/bin/pip install transformers       # leaves torch 2.13.0 in place
    /work/refenv/bin/python tests/reference/make_hf_reference.py

Default mode writes the fixture directory hf_gpt2_tiny/ next to this file, which
tests/test_hf_reference.py reads with NumPy alone:
    model.safetensors      GPT2LMHeadModel.save_pretrained's own file (tied head: no lm_head.weight)
    config.json            its own GPT2Config
    reference.safetensors  input_ids (B, T) int64 and the model's eval-mode logits (B, T, V) float32,
                           metadata {"fixture_version", "transformers", "torch"}
The model is GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=4), seeded,
float32, its LayerNorms moved away from 1/0 so that a swapped weight/bias shows.

Reverse mode, on a directory that numgpt.export_hf wrote with a reference.safetensors beside it
(input_ids and numgpt's logits for them):

    /work/refenv/bin/python tests/reference/make_hf_reference.py --check-export DIR

loads DIR with GPT2LMHeadModel.from_pretrained, prints the loading report and the worst logits
difference, and exits non-zero if transformers reports missing/unexpected/mismatched weights, if
the head's tying differs from config.json, or if the difference exceeds CHECK_ATOL.

Bump FIXTURE_VERSION whenever the content or the layout changes, and set the same number in
tests/test_hf_reference.py.
"""
import argparse
import copy
import json
import sys
from pathlib import Path

import numpy
import torch
import transformers
from safetensors.numpy import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

FIXTURE_VERSION = 1
SEED = 1234
B, T = 2, 9
CHECK_ATOL = 1e-5
MAX_FIXTURE_BYTES = 200 * 1024

HERE = Path(__file__).resolve().parent
FIXTURE_DIR = HERE / "hf_gpt2_tiny"
# initializer_range 0.2 instead of GPT-2's 0.02: with 0.02 the logits stay within +-0.4 and attention
# is nearly uniform, so a wrong attention scale or mask could hide under the 1e-5 tolerance.
TINY_CONFIG = dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=4, initializer_range=0.2)
# The float32 logits must sit this close to a float64 run of the same model: a quarter of the
# tests' tolerance, so that a correct float32 implementation has room for its own round-off.
FLOAT32_FLOOR_MAX = 2.5e-6


def make_model():
    """Seeded float32 GPT2LMHeadModel with every LayerNorm moved off 1/0, in eval mode."""
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(GPT2Config(**TINY_CONFIG)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                if name.endswith(".weight"):  # LayerNorm: 1 -> 1 + small noise
                    p.add_(0.1 * torch.randn_like(p))
                else:                         # LayerNorm: 0 -> small noise
                    p.copy_(0.1 * torch.randn_like(p))
    assert model.lm_head.weight is model.transformer.wte.weight, "GPT-2's head should be tied"
    return model


def logits_of(model, input_ids):
    with torch.no_grad():
        return model(torch.from_numpy(input_ids)).logits.numpy()  # (B, T) -> (B, T, V)


def write_fixture():
    torch.set_num_threads(1)
    model = make_model()
    gen = torch.Generator().manual_seed(SEED)
    input_ids = torch.randint(0, TINY_CONFIG["vocab_size"], (B, T), generator=gen, dtype=torch.int64).numpy()
    input_ids[1, 6] = input_ids[0, 2]  # a repeated token
    logits = logits_of(model, input_ids)
    floor = float(numpy.abs(logits_of(copy.deepcopy(model).double(), input_ids) - logits).max())
    if floor > FLOAT32_FLOOR_MAX:
        raise SystemExit(f"ill-conditioned fixture: float32 vs float64 logits differ by {floor:.2e} "
                         f"(> {FLOAT32_FLOOR_MAX:.1e}); choose another SEED")
    FIXTURE_DIR.mkdir(exist_ok=True)
    model.save_pretrained(FIXTURE_DIR, safe_serialization=True)
    for extra in sorted(p.name for p in FIXTURE_DIR.iterdir()
                        if p.name not in ("model.safetensors", "config.json", "generation_config.json")):
        if extra != "reference.safetensors":
            print(f"note: save_pretrained also wrote {extra}")
    # generation_config.json is not part of the fixture: numgpt neither reads nor writes it
    (FIXTURE_DIR / "generation_config.json").unlink(missing_ok=True)
    metadata = {"fixture_version": str(FIXTURE_VERSION), "transformers": transformers.__version__,
                "torch": torch.__version__}
    save_file({"input_ids": input_ids, "logits": numpy.ascontiguousarray(logits)},
              str(FIXTURE_DIR / "reference.safetensors"), metadata=metadata)
    # sanity: from_pretrained gives back the same logits
    again = logits_of(GPT2LMHeadModel.from_pretrained(FIXTURE_DIR).eval(), input_ids)
    assert numpy.array_equal(again, logits), "from_pretrained of the fixture changed the logits"
    size = sum(p.stat().st_size for p in FIXTURE_DIR.iterdir())
    files = ", ".join(f"{p.name} {p.stat().st_size / 1024:.1f} KiB" for p in sorted(FIXTURE_DIR.iterdir()))
    print(f"{FIXTURE_DIR.name}: {files}; total {size / 1024:.1f} KiB")
    print(f"fixture_version {FIXTURE_VERSION}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"logits {logits.shape} max |logit| {numpy.abs(logits).max():.3f}, float32 floor {floor:.1e}")
    if size > MAX_FIXTURE_BYTES:
        raise SystemExit(f"fixture is {size} bytes, more than {MAX_FIXTURE_BYTES}")


def check_export(directory):
    """0 if transformers loads numgpt's export cleanly and agrees with numgpt's logits."""
    torch.set_num_threads(1)
    directory = Path(directory)
    ref = load_file(str(directory / "reference.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    model, info = GPT2LMHeadModel.from_pretrained(directory, output_loading_info=True)
    model = model.eval()
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        found = sorted(map(str, info.get(kind, ())))
        found = [k for k in found if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        print(f"{kind}: {found}")
        if found:
            problems.append(f"{kind} {found}")
    want_tied = config.get("tie_word_embeddings", True)
    tied = model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    print(f"tie_word_embeddings {want_tied}; lm_head shares wte: {tied}")
    if tied != want_tied:
        problems.append(f"head tied {tied}, config.json says tie_word_embeddings {want_tied}")
    if not tied:
        from safetensors import safe_open
        with safe_open(str(directory / "model.safetensors"), framework="numpy") as f:
            if "lm_head.weight" in f.keys():
                same = numpy.array_equal(model.lm_head.weight.detach().numpy(), f.get_tensor("lm_head.weight"))
                print(f"lm_head.weight equals the file's lm_head.weight: {same}")
                if not same:
                    problems.append("lm_head.weight differs from the file's")
    logits = logits_of(model, ref["input_ids"])
    diff = float(numpy.abs(logits - ref["logits"]).max())
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: "
          f"logits {logits.shape}, max |transformers - numgpt| = {diff:.3e} (atol {CHECK_ATOL:.0e})")
    if not diff <= CHECK_ATOL:
        problems.append(f"logits differ by {diff:.3e} > {CHECK_ATOL:.0e}")
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    print("OK")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check-export", metavar="DIR",
                        help="load numgpt's export_hf DIR with transformers and compare with DIR/reference.safetensors")
    args = parser.parse_args(argv)
    if args.check_export:
        return check_export(args.check_export)
    write_fixture()
    return 0


if __name__ == "__main__":
    sys.exit(main())
