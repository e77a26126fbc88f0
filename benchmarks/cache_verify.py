"""What checking a data cache's checksums costs a run that reuses the cache (decodes nothing).

    python -m benchmarks.cache_verify [--images 4000] [--px 64] [--cifar 50000] [--rounds 15]

Two caches, built once in a temporary folder: an image folder (``--images`` random PNGs,
cached at ``--px``) and a CIFAR-10 laid out as torchvision stores it (``--cifar`` training
images, 10,000 test, 32 px, random). Each cache is opened exactly as a run does
(``bench.data.cache.folder`` / ``bench.data.cache.cifar``: list or stat the sources, fingerprint, open,
check) in three ways:

- ``no check``: verification switched off (what a reuse cost before checksums);
- ``stamped``: as bench runs, the files already verified on this host (four stats and a
  small read of verified.json);
- ``full hash``: verified.json removed first, so every array is hashed (what the first
  open on a host costs, and what every open would cost without the stamp).

The first two alternate, round by round (AB, BA, …); the full hashes run after them, as
hashing leaves the CPU caches cold for whatever comes next. Prints the median of each, the
extra cost over ``no check``, and the stamped check alone timed over 2,000 calls (the
rounds' own noise is larger than it). Target: the check ≤ 5 % of a reuse.
"""
from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from bench.config import DataConfig
from bench.data import cache, folders


def make_folder(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", max(10, n // 5))):
        for i in range(count):
            folder = root / split / f"c{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def make_cifar(root: Path, n_train: int) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = -(-n_train // 5)
    for i in range(1, 6):
        k = min(per, n_train - (i - 1) * per)
        batch = {"data": rng.integers(0, 256, (k, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, k))}
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    batch = {"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 10000))}
    (base / "test_batch").write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": list(folders.CIFAR10_CLASSES)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--px", type=int, default=64)
    p.add_argument("--cifar", type=int, default=50000)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_folder(tmp / "folder", args.images)
        make_cifar(tmp / "cifar", args.cifar)
        cases = {f"imagefolder {args.images}+{max(10, args.images // 5)} at {args.px}px":
                 lambda: cache.folder(DataConfig(name="imagefolder", root=str(tmp / "folder"),
                                                 cache_dir=str(tmp / "caches")), args.px, quiet=True),
                 f"cifar10 {args.cifar}+10000 at 32px":
                 lambda: cache.cifar(DataConfig(name="cifar10", root=str(tmp / "cifar"), cache_dir=str(tmp / "caches")),
                                     32, quiet=True)}
        for label, open_ in cases.items():
            c = open_()
            path, mib = c.path, c.nbytes / 2**20
            c.close()
            del c

            verify = cache._verify

            def timed(setup: Callable[[], None], teardown: Callable[[], None]) -> float:
                setup()
                t0 = time.perf_counter()
                c = open_()
                took = time.perf_counter() - t0
                c.close()
                teardown()
                return took

            modes = {"no check": (lambda: setattr(cache, "_verify", lambda *a: None),
                                  lambda: setattr(cache, "_verify", verify)),
                     "stamped": (lambda: None, lambda: None)}
            times: dict[str, list[float]] = {m: [] for m in modes}
            for r in range(args.rounds):  # interleaved: AB, BA, AB, …
                for m in list(modes)[::1 if r % 2 else -1]:
                    times[m].append(timed(*modes[m]))
            # apart: hashing 100s of MiB leaves the CPU caches cold for whatever runs next
            times["full hash"] = [timed(lambda: (path / cache.VERIFIED).unlink(), lambda: None)
                                  for _ in range(max(3, args.rounds // 5))]
            base = statistics.median(times["no check"])
            print(f"{label} ({mib:.0f} MiB of images), median of {args.rounds} interleaved rounds "
                  f"(full hash: {len(times['full hash'])} after them):")
            for m, ts in times.items():
                t = statistics.median(ts)
                extra = "" if m == "no check" else f"  ({(t - base) / base * 100:+.1f} % over no check)"
                print(f"  {m:<10} {t * 1e3:9.2f} ms{extra}")
            # the stamped check alone, timed over many calls (the rounds above are noisier than it is)
            sums = json.loads((path / "meta.json").read_text())["checksums"]
            n = 2000
            t0 = time.perf_counter()
            for _ in range(n):
                cache._verify(path, sums)
            check = (time.perf_counter() - t0) / n
            print(f"  the stamped check alone: {check * 1e6:.0f} µs = {check / base * 100:.1f} % of a reuse "
                  f"(target ≤ 5 %)")

if __name__ == "__main__":
    main()
