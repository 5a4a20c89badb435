"""A longer fuzz of numgpt's PyTorch reader than the suite's (tests/test_torch_hostile.py): random
opcode streams and random mutations (bytes replaced, inserted, deleted, the file cut) of the real
.pth fixtures, for --minutes. Every file must load or give a NumgptError; any other exception, a
file slower than --slow seconds or a peak memory (VmHWM) rise over --max-rise-mb is reported with
the file kept in --keep.

    python benchmarks/soak_torch_reader.py --minutes 5
"""
import argparse
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import numgpt  # noqa: E402  (the tests folder first on sys.path, for torch_file_writers)
from numgpt.io import torch_format  # noqa: E402
from torch_file_writers import (  # noqa: E402
    MARK, PROTO2, STOP, TUPLE, get, integer, ordered_dict, put, storage, tensor, text, torch_zip)

FIXTURES = REPO / "tests" / "reference" / "torch_files"
SEEDS = [path.read_bytes() for path in sorted(FIXTURES.rglob("*.pth")) + sorted(FIXTURES.rglob("*.bin"))]
OPCODES = sorted(torch_format.OPCODES) + sorted(torch_format.REFUSED_NAMES)
PIECES = [storage("0", 6), tensor("0", 6, [2, 3]), tensor("0", 6, [3, 2], [1, 3]), ordered_dict(), text("k"),
          integer(-5), integer(2**40), MARK, TUPLE, put(0), get(0), put(1), get(1)]
FLOATS = bytes(24)


def peak():
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:"))) * 1024


def opcode_stream(rng):
    pieces = []
    for _ in range(rng.randrange(60)):
        if rng.random() < 0.5:
            pieces.append(rng.choice(PIECES))
        else:
            pieces.append(bytes([rng.choice(OPCODES)]) + rng.randbytes(rng.randrange(6)))
    return PROTO2 + b"".join(pieces) + (STOP if rng.random() < 0.8 else b"")


def mutant(rng):
    raw = bytearray(rng.choice(SEEDS))
    for _ in range(rng.randrange(1, 6)):
        at = rng.randrange(len(raw) or 1)
        how = rng.random()
        if how < 0.5:
            raw[at:at + 1] = bytes([rng.randrange(256)])
        elif how < 0.7:
            raw[at:at] = rng.randbytes(rng.randrange(1, 5))
        elif how < 0.9:
            del raw[at:at + rng.randrange(1, 5)]
        else:
            del raw[at:]
    return bytes(raw)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow", type=float, default=2.0, help="seconds one file may take")
    parser.add_argument("--max-rise-mb", type=float, default=64.0, help="peak memory rise allowed over the start")
    parser.add_argument("--keep", type=Path, default=Path("soak-findings"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    counts = {"loaded": 0, "refused": 0, "findings": 0}
    reasons = {}
    deadline = time.time() + 60 * args.minutes
    start_peak = peak()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.pth"
        while time.time() < deadline:
            if rng.random() < 0.5:
                torch_zip(path, opcode_stream(rng), {"0": FLOATS})
            else:
                path.write_bytes(mutant(rng))
            began = time.perf_counter()
            problem = None
            try:
                numgpt.load_torch(path)
                counts["loaded"] += 1
            except numgpt.NumgptError as error:
                counts["refused"] += 1
                reason = getattr(error, "reason", type(error).__name__)
                reasons[reason] = reasons.get(reason, 0) + 1
            except Exception:                                              # noqa: BLE001 - what the soak looks for
                problem = traceback.format_exc()
            took = time.perf_counter() - began
            if problem is None and took > args.slow:
                problem = f"took {took:.1f} s"
            if problem is None and peak() - start_peak > args.max_rise_mb * 2**20:
                problem = f"peak memory rose {(peak() - start_peak) / 2**20:.0f} MiB"
            if problem:
                counts["findings"] += 1
                args.keep.mkdir(exist_ok=True)
                kept = args.keep / f"finding-{counts['findings']:03d}.pth"
                kept.write_bytes(path.read_bytes())
                print(f"{kept}: {problem}", file=sys.stderr)
    total = counts["loaded"] + counts["refused"] + counts["findings"]
    print(f"{total} files in {args.minutes:g} min ({total / (60 * args.minutes):.0f}/s): {counts['loaded']} loaded, "
          f"{counts['refused']} refused with a NumgptError, {counts['findings']} findings; "
          f"peak memory rise {(peak() - start_peak) / 2**20:.1f} MiB")
    print("refusals by reason:", ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])))
    return 1 if counts["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
