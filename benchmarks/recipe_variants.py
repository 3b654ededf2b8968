"""Validation zero-one loss of recipe variants on the twin-grouped fit/validation split, with and without
flip test-time augmentation, averaged over seeds. Validation only: the test split is never read.

    python benchmarks/recipe_variants.py --data-dir ../shared/data/muffin-chihuahua-dev --work-dir work \
        --device cuda

Prints one JSON line per variant (the table "Longer schedules and flip test-time augmentation" in
benchmarks/README.md came from this on an H100). On a 2-core CPU one deeper_cnn training of 45 epochs
takes about half an hour: pass --variants to run a few.

The comparison that decides a recipe is paired twin-grouped CV (recipe_cv.py). The moving average of the
weights and MixUp / CutMix variants ran with commit eb66f8b, which had them; they were removed with the
training step's support for them (benchmarks/README.md, "Recipe candidates by CV").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from muffin_lib.data.cache import load_images
from muffin_lib.data.splits import plan_for_cache
from muffin_lib.training import loop
from muffin_lib.training.recipe import TrainConfig

VARIANTS = {
    "deeper-15": ("deeper_cnn", 15, (0, 1, 2), {}),
    "deeper-30": ("deeper_cnn", 30, (0, 1, 2), {}),
    "deeper-45": ("deeper_cnn", 45, (0, 1, 2), {}),
    "resnet-15": ("resnet_like", 15, (0, 1), {}),
    "resnet-30": ("resnet_like", 30, (0, 1), {}),
    "simple-15": ("simple_cnn", 15, (0, 1), {}),
    "simple-30": ("simple_cnn", 30, (0, 1), {}),
    "deeper-30-wd0.1": ("deeper_cnn", 30, (0, 1, 2), {"weight_decay": 0.1}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    args = parser.parse_args()
    recipe = TrainConfig()
    cache = load_images(args.data_dir, args.work_dir, "train", recipe.image_size, recipe.color_mode,
                        progress=False)
    plan = plan_for_cache(cache, args.work_dir)
    fit_idx, val_idx = torch.as_tensor(plan.train_idx), torch.as_tensor(plan.val_idx)
    images, labels = cache.images[fit_idx], cache.labels[fit_idx]
    val_images, val_labels = cache.images[val_idx], cache.labels[val_idx]
    for name in args.variants.split(","):
        model, epochs, seeds, changes = VARIANTS[name]
        plain, tta, seconds = [], [], []
        for seed in seeds:
            config = recipe.replace(model=model, epochs=epochs, seed=seed, **changes)
            started = time.perf_counter()
            fitted = loop.fit(config, (images, labels), device=args.device, progress=False)
            seconds.append(time.perf_counter() - started)
            scores = loop.evaluate(fitted.model, val_images, val_labels, fitted.normalization,
                                   device=args.device, flip_tta=True)
            plain.append(scores["zero_one_loss"])
            tta.append(scores["flip_tta_zero_one_loss"])
        row = {"variant": name, "model": model, "epochs": epochs, **changes, "seeds": len(seeds),
               "validation": statistics.mean(plain), "validation_flip_tta": statistics.mean(tta),
               "per_seed": [round(v, 4) for v in plain], "seconds": round(statistics.mean(seconds), 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
