"""Measure training steps/s under different glibc mallopt settings, one fresh process per setting.

    python benchmarks/allocator.py --model deeper_cnn --image-size 128 --batch-size 64 --steps 8

Each setting runs in its own subprocess (mallopt only affects later allocations, and a warm heap
would flatter whichever setting ran second). Prints images/s per setting.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

CODES = {"M_TRIM_THRESHOLD": -1, "M_TOP_PAD": -2, "M_MMAP_THRESHOLD": -3, "M_MMAP_MAX": -4, "M_ARENA_MAX": -8}
VARIANTS = {
    "glibc defaults": {},
    "MMAP_MAX=0": {"M_MMAP_MAX": 0},
    "MMAP_MAX=0 + TRIM": {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30},
    "MMAP_MAX=0 + TRIM + TOP_PAD": {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30, "M_TOP_PAD": 256 << 20},
    "MMAP_MAX=0 + TRIM + TOP_PAD + ARENA_MAX=1": {
        "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30, "M_TOP_PAD": 256 << 20, "M_ARENA_MAX": 1},
    "TRIM + MMAP_THRESHOLD=1G": {"M_TRIM_THRESHOLD": 1 << 30, "M_MMAP_THRESHOLD": 1 << 30},
}


def child(args, settings: dict) -> None:
    libc = ctypes.CDLL("libc.so.6")
    for name, value in settings.items():
        assert libc.mallopt(CODES[name], value) == 1, name
    import torch

    from muffin_lib.training.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, in_channels=1, image_size=args.image_size)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(args.batch_size, 1, args.image_size, args.image_size)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch_size,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    images = args.steps * args.batch_size
    print(json.dumps({
        "img_per_s": images / seconds,
        "user_ms_per_img": 1000 * (after.ru_utime - before.ru_utime) / images,
        "sys_ms_per_img": 1000 * (after.ru_stime - before.ru_stime) / images,
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / args.steps,
    }))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="deeper_cnn")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child is not None:
        child(args, json.loads(args.child))
        return
    names = args.variants.split(",")
    results: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):  # interleaved rounds, so load from other processes hits every variant
        for name in names:
            cmd = [sys.executable, __file__, "--child", json.dumps(VARIANTS[name]), "--model", args.model,
                   "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--threads", str(args.threads)]
            cmd += ["--channels-last"] if args.channels_last else []
            run = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[name].append(json.loads(run.stdout.strip().splitlines()[-1]))
    print(f"{args.model} {args.image_size}px batch {args.batch_size}, {args.repeats} interleaved runs each:")
    print(f"{'(medians; best img/s in brackets)':45s} {'img/s':>14s} {'user ms/img':>11s} "
          f"{'sys ms/img':>10s} {'page faults/step':>16s}")
    for name, runs in results.items():
        def median(key, runs=runs):
            return statistics.median(r[key] for r in runs)

        speeds = f"{median('img_per_s'):.1f} ({max(r['img_per_s'] for r in runs):.1f})"
        print(f"{name:45s} {speeds:>14s} {median('user_ms_per_img'):11.1f} {median('sys_ms_per_img'):10.1f} "
              f"{median('faults_per_step'):16.0f}", flush=True)

if __name__ == "__main__":
    main()
