"""The seed's whole pretraining run, wall time, numgpt against PyTorch.

    python benchmarks/bench_full_run.py --out benchmarks/full_run.md

numgpt: ``numgpt train --out DIR`` with its defaults, which are the seed's run
on the bundled the-verdict.txt (GPT_CONFIG_124M, batch 2 x 256, AdamW lr 4e-4 and
weight decay 0.1, 10 epochs, evaluation every 5 steps over 5 batches, a
sample after each epoch). PyTorch: the same run written with the reference
package's own functions (``llms_from_scratch`` ch02/ch04/ch05), in the torch
interpreter ``--torch-python`` (default: the one running this script) with
torch.set_num_threads(2). Each run is one
process, timed from start to exit; they run one after the other.

tiktoken cannot download here: the PyTorch side finds GPT-2's BPE files in
a tiktoken cache directory that this script fills from the copies bundled
with numgpt (tiktoken checks their pinned sha256).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_torch_python, machine_description, reference_side, write_report

HERE = Path(__file__).resolve()
TIKTOKEN_URLS = {"vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                 "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"}
LOG_LINE = re.compile(r"Ep (\d+) \(Step (\d+)\): Train loss ([\d.]+), Val loss ([\d.]+)")
SEED_LAST_LINE = "Ep 10 (Step 000085): Train loss 0.391, Val loss 6.452"   # the seed's published run

TORCH_RUN = """
import sys, torch
from llms_from_scratch.ch02 import create_dataloader_v1
from llms_from_scratch.ch04 import GPTModel
from llms_from_scratch.ch05 import train_model_simple
import tiktoken
torch.set_num_threads(2)
cfg = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
       "drop_rate": 0.1, "qkv_bias": False}
text = open(sys.argv[1], encoding="utf-8").read()
split = int(0.9 * len(text))
torch.manual_seed(123)
train_loader = create_dataloader_v1(text[:split], batch_size=2, max_length=256, stride=256, drop_last=True,
                                    shuffle=True, num_workers=0)
val_loader = create_dataloader_v1(text[split:], batch_size=2, max_length=256, stride=256, drop_last=False,
                                  shuffle=False, num_workers=0)
torch.manual_seed(123)
model = GPTModel(cfg)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)
train_model_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=10, eval_freq=5, eval_iter=5,
                   start_context="Every effort moves you", tokenizer=tiktoken.get_encoding("gpt2"))
"""


def tiktoken_cache(directory):
    """A TIKTOKEN_CACHE_DIR holding GPT-2's files under the names tiktoken looks for (sha1 of the URL)."""
    from numgpt.io.bundled import bundled_path
    for name, url in TIKTOKEN_URLS.items():
        shutil.copyfile(bundled_path(f"gpt2/{name}"), Path(directory) / hashlib.sha1(url.encode()).hexdigest())
    return directory


def timed(argv, env=None):
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{argv[:3]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds, result.stdout


def last_log_line(stdout):
    lines = [m for m in LOG_LINE.finditer(stdout)]
    return lines[-1].group(0) if lines else "(no log line)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the Markdown report here (and print it)")
    parser.add_argument("--data", type=Path, help="a text file (default: the bundled the-verdict.txt)")
    add_torch_python(parser)
    args = parser.parse_args()

    from numgpt.io.bundled import VERDICT, bundled_path
    data = args.data or bundled_path(VERDICT)
    with tempfile.TemporaryDirectory() as tmp:
        numgpt_seconds, numgpt_out = timed([sys.executable, "-m", "numgpt", "train", "--data", str(data),
                                            "--out", str(Path(tmp) / "run")])
        (Path(tmp) / "tiktoken").mkdir()
        env = dict(os.environ, TIKTOKEN_CACHE_DIR=tiktoken_cache(Path(tmp) / "tiktoken"))
        torch_seconds = torch_out = None
        torch_version, torch_missing = reference_side(args.torch_python)
        if torch_version:
            torch_seconds, torch_out = timed([args.torch_python, "-c", TORCH_RUN, str(data)], env)
        losses = json.loads((Path(tmp) / "run" / "losses.json").read_text())

    lines = ["# The seed's full pretraining run (10 epochs, 90 steps, evaluation every 5)", "",
             f"Machine: {machine_description(torch_version)}; load average {os.getloadavg()[0]:.1f} at the end.",
             "",
             "| run | wall time | last log line |", "|---|---|---|",
             f"| numgpt train (CLI, defaults) | {numgpt_seconds / 60:.2f} min | {last_log_line(numgpt_out)} |"]
    if torch_seconds is not None:
        lines.append(f"| PyTorch, llms_from_scratch's train_model_simple | {torch_seconds / 60:.2f} min | "
                     f"{last_log_line(torch_out)} |")
    lines.append(f"| the seed's published run (GPU or CPU unknown) | — | {SEED_LAST_LINE} |")
    if torch_missing:
        lines += ["", torch_missing]
    if torch_seconds is not None:
        ratio = numgpt_seconds / torch_seconds
        lines += ["", f"**numgpt / PyTorch wall time: {ratio:.2f}** (issue 15 target: <= 0.40)."]
    lines += ["", f"numgpt's losses: train {losses['train_losses'][0]:.3f} -> {losses['train_losses'][-1]:.3f}, "
                  f"val {losses['val_losses'][0]:.3f} -> {losses['val_losses'][-1]:.3f} over "
                  f"{losses['total_tokens']:,} tokens.", "",
              "numgpt's samples after each epoch:", "", "```",
              *[line for line in numgpt_out.splitlines() if line.startswith("Every effort")], "```"]
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
