"""Issue 23's targets: numgpt prepare against tiktoken, and training from a large token store.

    python benchmarks/bench_corpora.py --out benchmarks/corpora.md            # the issue's sizes
    python benchmarks/bench_corpora.py --smoke                                 # a tiny run of every part

1. prepare: a corpus of --text-mb MB (the-verdict's paragraphs, repeated and shuffled into files of
   about 20 KB) tokenized by ``numgpt prepare --workers 2``, against tiktoken's own
   ``encode_ordinary_batch(num_threads=2)`` on the same documents. Target: prepare's MB/s >= 80% of
   tiktoken's, and the peak RSS of prepare's processes (summed over the tree) <= 1 GB.
2. training: a store of --store-tokens tokens (the-verdict's token documents repeated and shuffled,
   written with prepare's own shard writer) and a store of the-verdict, each trained on for --steps
   steps (tiny preset unless --preset). Targets: peak RSS within 150 MB of the-verdict's run, the
   first step within 5 s of the start, steps/s within 5% of the in-memory text path.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy
from common import write_report


def tree_rss(pid):
    """Resident bytes of ``pid`` and all its descendants, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except OSError:
                continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo.extend(children.get(current, []))
    return total


def run_measured(command, marker=None):
    """(seconds, peak tree RSS in bytes, seconds until a stdout line holds ``marker``, stdout)."""
    start = time.time()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, first, lines = [0], [None], []

    def read():
        for line in process.stdout:
            lines.append(line)
            if marker and first[0] is None and marker in line:
                first[0] = time.time() - start

    reader = threading.Thread(target=read)
    reader.start()
    while process.poll() is None:
        peak[0] = max(peak[0], tree_rss(process.pid))
        time.sleep(0.05)
    reader.join()
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed: {process.stderr.read()}")
    return time.time() - start, peak[0], first[0], "".join(lines)


def make_corpus(directory, megabytes, seed=0):
    """Files of about 20 KB of the-verdict's paragraphs, shuffled, ``megabytes`` MB in all."""
    import numgpt
    paragraphs = [p for p in numgpt.load_the_verdict().split("\n\n") if p.strip()]
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written, index, documents = 0, 0, []
    while written < megabytes * 1e6:
        text = "\n\n".join(rng.choice(paragraphs) for _ in range(60))
        path = directory / f"doc-{index:07d}.txt"
        path.write_text(text, encoding="utf-8")
        documents.append(path)
        written += len(text.encode())
        index += 1
    return documents, written


def tiktoken_rate(documents, batch=256):
    """MB/s of tiktoken's encode_ordinary_batch with 2 threads over ``documents``."""
    from numgpt import get_tokenizer
    encoding = get_tokenizer()
    total, start = 0, time.time()
    for i in range(0, len(documents), batch):
        texts = [p.read_text(encoding="utf-8") for p in documents[i:i + batch]]
        encoding.encode_ordinary_batch(texts, num_threads=2)
        total += sum(len(t.encode()) for t in texts)
    return total / (time.time() - start) / 1e6


def make_big_store(directory, n_tokens, seed=0):
    """A store of ``n_tokens`` tokens: the-verdict's token documents (paragraphs) repeated and shuffled."""
    import numgpt
    from numgpt.data import prepare
    from numgpt.data import token_store
    encoding = numgpt.get_tokenizer()
    paragraphs = [numpy.asarray(encoding.encode_ordinary(p), dtype=numpy.uint16)
                  for p in numgpt.load_the_verdict().split("\n\n") if p.strip()]
    rng = numpy.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    writers = {split: prepare.SplitWriter(directory, split, "uint16", encoding.eot_token, 100_000_000)
               for split in token_store.SPLITS}
    written = 0
    while written < n_tokens:
        for choice in rng.integers(0, len(paragraphs), 4096):
            writers["train"].add(paragraphs[choice])
            written += len(paragraphs[choice]) + 1
    for choice in rng.integers(0, len(paragraphs), 200):
        writers["val"].add(paragraphs[choice])
    for writer in writers.values():
        writer.commit()
        writer.close()
    record = {"name": "gpt2", "n_vocab": encoding.n_vocab, "eot_id": encoding.eot_token,
              "files": {"encoder.json": numgpt.io.bundled.SHA256[numgpt.io.bundled.GPT2_ENCODER_JSON]}}
    manifest = {"format": token_store.FORMAT, "version": token_store.VERSION, "tokenizer": record,
                "dtype": "uint16", "documents": sum(w.documents for w in writers.values()),
                "splits": {s: {"shards": w.shards} for s, w in writers.items()},
                "validation": {"how": "generated"}, "sources": []}
    token_store.write_atomically(directory / token_store.MANIFEST, json.dumps(manifest, indent=1).encode())
    return written


def train_measured(data, out, preset, steps):
    command = [sys.executable, "-m", "numgpt", "train", "--out", str(out), "--preset", preset, "--max-steps",
               str(steps), "--eval-freq", str(10 ** 9), "--eval-iter", "1"] + (["--data", str(data)] if data else [])
    seconds, rss, first, stdout = run_measured(command, marker="(Step 000000)")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "peak_rss": rss, "first_step_s": first,
            "steps_per_s": (steps - 1) / max(seconds - first, 1e-9), "metrics": len(metrics)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the Markdown report here (and print it)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every part runs")
    parser.add_argument("--text-mb", type=float, default=1024)
    parser.add_argument("--store-tokens", type=float, default=2e9)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    if args.smoke:
        args.text_mb, args.store_tokens, args.steps = 2, 2e5, 3
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        documents, text_bytes = make_corpus(scratch / "corpus", args.text_mb)
        reference = tiktoken_rate(documents)
        seconds, rss, _, _ = run_measured([sys.executable, "-m", "numgpt", "prepare", str(scratch / "corpus"),
                                           "--out", str(scratch / "corpus-store"), "--workers", "2"])
        prepare_rate = text_bytes / seconds / 1e6
        import numgpt
        subprocess.run([sys.executable, "-m", "numgpt", "prepare", str(numgpt.io.bundled.bundled_path(
            numgpt.io.bundled.VERDICT)), "--out", str(scratch / "verdict-store"), "--workers", "1"], check=True,
            capture_output=True)
        big_tokens = make_big_store(scratch / "big-store", int(args.store_tokens))
        runs = {name: train_measured(data, scratch / f"run-{name}", args.preset, args.steps)
                for name, data in (("text", None), ("verdict store", scratch / "verdict-store"),
                                   ("big store", scratch / "big-store"))}
    lines = [f"# numgpt prepare and training from token stores ({'smoke run' if args.smoke else 'one run'})", "",
             f"prepare: {text_bytes / 1e6:,.0f} MB of text in {seconds:.1f} s = {prepare_rate:.1f} MB/s with 2 "
             f"workers; tiktoken encode_ordinary_batch (2 threads): {reference:.1f} MB/s; ratio "
             f"{prepare_rate / reference:.2f} (target >= 0.80); peak RSS {rss / 2**20:,.0f} MiB (target <= 1024)", "",
             f"training ({args.preset}, {args.steps} steps; big store {big_tokens:,} tokens):", "",
             "| data | peak RSS MiB | first step s | steps/s |", "|---|---|---|---|"]
    for name, run in runs.items():
        lines.append(f"| {name} | {run['peak_rss'] / 2**20:,.0f} | {run['first_step_s']:.2f} | "
                     f"{run['steps_per_s']:.2f} |")
    big, small, text = runs["big store"], runs["verdict store"], runs["text"]
    lines += ["", f"big - verdict store peak RSS: {(big['peak_rss'] - small['peak_rss']) / 2**20:+.0f} MiB (target "
              f"<= 150); big store steps/s / text path: {big['steps_per_s'] / text['steps_per_s']:.3f} (target "
              f">= 0.95); first step {big['first_step_s']:.2f} s (target <= 5)"]
    write_report("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
