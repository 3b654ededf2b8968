"""Seconds per training epoch of each model on the dev train split, from part of an epoch.

    python benchmarks/epoch_time.py --data-dir DATA --work-dir WORK [--image-size 128] [--steps 8]

Loads the cache and the split like ``train_model``, runs ``loop.TrainStep`` (the step ``fit`` runs)
for a few warm-up and ``--steps`` timed batches per model, times one validation pass, and
extrapolates to one epoch over the training part of the split.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from muffin_lib.data.cache import load_images  # noqa: E402
from muffin_lib.data.splits import plan_for_cache  # noqa: E402
from muffin_lib.training import loop, recipe, runtime, tensors  # noqa: E402
from muffin_lib.training.models import MODEL_NAMES, build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--color-mode", default="grayscale")
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = runtime.resolve_device(args.device)
    if device.type == "cpu":
        runtime.tune_cpu_allocator()
    cache = load_images(args.data_dir, args.work_dir, "train", args.image_size, args.color_mode,
                        progress=False)
    plan = plan_for_cache(cache, args.work_dir)
    train_idx, val_idx = torch.as_tensor(plan.train_idx), torch.as_tensor(plan.val_idx)
    train_images, train_labels = cache.images[train_idx], cache.labels[train_idx]
    val_images, val_labels = cache.images[val_idx], cache.labels[val_idx]
    n_train = len(train_labels)
    print(f"{n_train} training + {len(val_labels)} validation images, {args.image_size} px "
          f"{args.color_mode}, device {device}, {torch.get_num_threads()} threads, "
          f"allocator {runtime.allocator_state()}")
    for name in args.models.split(","):
        config = recipe.TrainConfig(model=name, image_size=args.image_size, color_mode=args.color_mode)
        runtime.seed_everything(0)
        model = build_model(name, in_channels=config.in_channels, image_size=args.image_size).to(device)
        model = model.to(memory_format=torch.channels_last)
        normalization = tensors.compute_normalization(train_images)
        step = loop.TrainStep(model, config, device, normalization, total_steps=1000)
        order = torch.randperm(n_train)
        batches = [order[i : i + config.batch_size] for i in range(0, n_train, config.batch_size)]
        model.train()
        for idx in batches[:2]:
            step(train_images[idx].to(device), train_labels[idx].to(device))
        started = time.perf_counter()
        for idx in batches[2 : 2 + args.steps]:
            step(train_images[idx].to(device), train_labels[idx].to(device))
        idx = batches[0]
        loss = step(train_images[idx].to(device), train_labels[idx].to(device))[0].item()  # .item() syncs
        per_image = (time.perf_counter() - started) / ((args.steps + 1) * config.batch_size)
        started = time.perf_counter()
        loop.evaluate(model, val_images, val_labels, normalization, device=device, batch_size=128)
        val_seconds = time.perf_counter() - started
        epoch = per_image * n_train + val_seconds
        print(f"{name:12s} {1 / per_image:7.1f} train images/s -> {per_image * n_train:6.0f} s training + "
              f"{val_seconds:4.0f} s validation = {epoch:6.0f} s per epoch ({math.ceil(n_train / 64)} steps; "
              f"loss {loss:.3f})", flush=True)


if __name__ == "__main__":
    main()
