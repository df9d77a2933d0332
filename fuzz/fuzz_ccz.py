"""Long fuzz run of the .ccz reader: N random mutations (default 100,000) of a valid file.

    .venv/bin/python fuzz/fuzz_ccz.py --cases 100000

Passes when every case either loads or raises our one-line InputError (anything else is reported and counted
as a failure), and the process's peak RSS stays bounded (no allocation the file does not justify).
"""
from __future__ import annotations

import argparse
import sys
import random
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from cnncompress import models, storage
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "storage"))  # the mutation helpers
from ccz_mutations import KINDS, flip_outcomes, load_outcome, mutate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flips", type=int, default=0,
                        help="instead: N random single-bit flips, each loaded and compared with the original model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        seed_file = storage.save(models.build("cascade_cnn", 10, 1, 28, width=0.125), Path(tmp) / "seed.ccz")
        data = seed_file.read_bytes()
        if args.flips:
            started = time.perf_counter()
            outcomes = flip_outcomes(data, Path(tmp) / "case.ccz", args.flips, args.seed)
            print(f"{args.flips} single-bit flips of a {len(data)}-byte file in {time.perf_counter() - started:.0f}s: "
                  f"{outcomes}")
            return 1 if outcomes["different"] else 0
        target = Path(tmp) / "case.ccz"
        outcomes, failures = Counter(), []
        start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        for case in tqdm(range(args.cases), mininterval=5, desc="fuzz .ccz"):
            kind = rng.choice(KINDS)
            mutated = mutate(data, kind, rng.randrange(1 << 30), rng.randrange(1 << 30))
            try:
                outcomes[(kind, load_outcome(mutated, target))] += 1
            except Exception as error:  # noqa: BLE001 - any other exception is a finding
                failures.append((case, kind, f"{type(error).__name__}: {error}"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.cases} cases in {time.perf_counter() - started:.0f}s; outcomes: "
          + ", ".join(f"{k}/{o}={n}" for (k, o), n in sorted(outcomes.items())))
    print(f"peak RSS {peak:.0f} MB (start {start_rss:.0f} MB, seed file {len(data)} bytes); failures: {len(failures)}")
    for failure in failures[:20]:
        print("  FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
