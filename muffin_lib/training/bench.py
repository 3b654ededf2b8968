"""Training throughput of the reference pipeline and ours, on the same images, model and device.

reference: torchvision ``ImageFolder`` + per-sample PIL transforms (Grayscale, Resize((S, S)),
  RandomHorizontalFlip, RandomRotation(10), ToTensor, Normalize) through a ``DataLoader`` with
  batch 4, float32, Adam, glibc's default allocator settings. It runs first, before ours tunes the
  allocator (a process-wide setting).
ours: decode once (the cache's preprocessing, timed separately), then ``loop.TrainStep`` - the
  step ``fit`` runs: batch 64 on the device, normalisation and augmentation there, channels_last
  (contiguous on Apple MPS: ``runtime.memory_format_for``),
  fused AdamW, AMP where it pays, tuned allocator on the CPU.

The two pipelines run in alternating rounds (reference, ours, reference, ours, ...; ``--rounds``, at
least 3 by default), each round warmed up and then timed over a fixed number of optimizer steps chosen
from ``--seconds``, so a busy minute on a shared machine hits both. The result is the median over the
rounds, with the spread (min and max of the per-round speedup). Only the first reference round runs
with glibc's default allocator; later ones inherit ours' tuned allocator, which can only make the
reference faster (the reported speedup is conservative). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from muffin_lib.config import COLOR_MODES, channels_for
from muffin_lib.errors import MuffinError
from muffin_lib.text import plural
from muffin_lib.training import loop, recipe, runtime, tensors
from muffin_lib.training.models import MODEL_NAMES, build_model

log = logging.getLogger(__name__)

WARMUP_STEPS = 2
MIN_TIMED_STEPS = 3


def training_flops_per_image(model_name: str, in_channels: int, image_size: int) -> float:
    """FLOPs of one forward + backward pass per image, counted by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_name, in_channels=in_channels, image_size=image_size)
    x = torch.randn(2, in_channels, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    return counter.get_total_flops() / 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time_steps(step, device: torch.device, seconds: float) -> dict:
    """Warm up, pick a step count that fills about ``seconds``, time exactly that many steps.
    ``step()`` trains on one batch and returns its size."""
    for _ in range(WARMUP_STEPS):
        step()
    _sync(device)
    started = time.perf_counter()
    step()
    _sync(device)
    one = time.perf_counter() - started
    n_steps = max(MIN_TIMED_STEPS, round(seconds / max(one, 1e-6)))
    started = time.perf_counter()
    n_images = sum(step() for _ in range(n_steps))
    _sync(device)
    elapsed = time.perf_counter() - started
    return {"steps": n_steps, "images": n_images, "seconds": elapsed, "img_per_s": n_images / elapsed}


def _reference_pipeline(dataset, model_name, in_channels, image_size, device, seconds, batch_size):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    model = build_model(model_name, in_channels=in_channels, image_size=image_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    batches = iter(loader)

    def step():
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        return len(y)

    model.train()
    return _time_steps(step, device, seconds)


def _muffin_pipeline(images, labels, config, device, seconds):
    runtime.seed_everything(config.seed)
    if device.type == "cpu":
        runtime.tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_model(config.model, in_channels=config.in_channels, image_size=config.image_size)
    model = model.to(device, memory_format=runtime.memory_format_for(device, config.channels_last))  # as fit
    normalization = tensors.compute_normalization(images)
    images = tensors.place_images(images, device)
    labels = labels.to(device)
    train_step = loop.TrainStep(model, config, device, normalization, total_steps=10_000)
    generator = torch.Generator().manual_seed(config.seed)
    order, position = torch.randperm(len(labels), generator=generator), 0

    def step():
        nonlocal order, position
        if position + config.batch_size > len(order):
            order, position = torch.randperm(len(labels), generator=generator), 0
        idx = order[position : position + config.batch_size]
        position += config.batch_size
        train_step(tensors.take_batch(images, idx, device), labels[idx.to(labels.device)])
        return len(idx)

    model.train()
    timing = _time_steps(step, device, seconds)
    timing["amp"] = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[train_step.amp_dtype]
    timing["memory_format"] = runtime.memory_format_name(device, config.channels_last)
    return timing


def run_benchmark(
    model: str = "deeper_cnn",
    image_size: int = 256,
    data_dir=None,
    n_images: int = 256,
    batch_size: int = 64,
    device: str = "auto",
    *,
    color_mode: str = "grayscale",
    seconds: float = 20.0,
    rounds: int = 3,
    baseline_batch_size: int = 4,
    threads: int | None = None,
    seed: int = 0,
    amp: str = "auto",
    log_to=print,
) -> dict:
    """Measure training images/s of the reference pipeline and ours (see the module docstring).

    ``amp`` is ours' precision request (``recipe.TrainConfig.amp``); where it resolves to bf16 or fp16, every
    round also times ours in fp32 (``amp="off"``), and the result reports the median precision speed-up
    (``amp_speedup``) measured in the same rounds."""
    from torchvision import datasets, transforms

    from muffin_lib.data.imageio import preprocess_image

    say = log_to or log.info
    resolved = runtime.resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    in_channels = channels_for(color_mode)
    allocator_before = runtime.allocator_state()
    temp_dir = None
    synthetic = data_dir is None
    try:
        if synthetic:
            from muffin_lib.data.synthetic import make_synthetic_dataset

            temp_dir = Path(tempfile.mkdtemp(prefix="muffin-bench-"))
            data_dir = make_synthetic_dataset(
                temp_dir / "data", n_train=n_images, n_test=2, image_size=max(image_size, 64), seed=seed
            )
            say(f"no --data-dir: using a SYNTHETIC set of {n_images} generated images in {data_dir}")
        train_dir = Path(data_dir) / "train"
        if not train_dir.is_dir():
            raise MuffinError(f"{train_dir} does not exist; --data-dir must hold train/<class>/ folders")
        reference_transform = transforms.Compose(
            ([transforms.Grayscale()] if in_channels == 1 else [])
            + [
                transforms.Resize((image_size, image_size)),
                transforms.RandomHorizontalFlip(),
                transforms.RandomRotation(10),
                transforms.ToTensor(),
                transforms.Normalize([0.5] * in_channels, [0.5] * in_channels),
            ]
        )
        folder = datasets.ImageFolder(train_dir, transform=reference_transform)
        if len(folder) == 0:
            raise MuffinError(f"no images under {train_dir}")
        chosen = torch.randperm(len(folder), generator=torch.Generator().manual_seed(seed))[:n_images].tolist()
        subset = torch.utils.data.Subset(folder, chosen)
        flops = training_flops_per_image(model, in_channels, image_size)
        threads = torch.get_num_threads()
        say(
            f"{model} at {image_size} px {color_mode}, {plural(len(chosen), 'image')} from {data_dir}, "
            f"device {resolved}, "
            f"{plural(threads, 'CPU thread')}; {flops / 1e9:.2f} GFLOP per image per training step"
        )

        started = time.perf_counter()
        images = torch.stack([preprocess_image(folder.samples[i][0], image_size, color_mode) for i in chosen])
        labels = torch.tensor([folder.samples[i][1] for i in chosen], dtype=torch.int64)
        decode_seconds = time.perf_counter() - started
        say(f"ours decodes once: {decode_seconds:.1f} s ({len(chosen) / decode_seconds:.0f} images/s, not timed below)")
        config = recipe.TrainConfig(
            model=model, image_size=image_size, color_mode=color_mode, batch_size=batch_size, seed=seed, amp=amp
        )
        precision = runtime.execution_key(amp, resolved, config).split("/")[1]
        why = runtime.precision_reason(amp, resolved, config)
        compare_fp32 = precision != "fp32"
        say(f"ours trains in {why}" + ("; every round also times fp32 for the precision speed-up" if compare_fp32 else ""))
        per_round = []
        for number in range(1, max(1, rounds) + 1):
            allocator = runtime.allocator_state()
            baseline = _reference_pipeline(subset, model, in_channels, image_size, resolved, seconds, baseline_batch_size)
            ours = _muffin_pipeline(images, labels, config, resolved, seconds)
            per_round.append({"round": number, "baseline_img_per_s": baseline["img_per_s"],
                              "muffin_img_per_s": ours["img_per_s"], "speedup": ours["img_per_s"] / baseline["img_per_s"],
                              "baseline_allocator": allocator, "baseline_steps": baseline["steps"],
                              "muffin_steps": ours["steps"]})
            if compare_fp32:
                fp32 = _muffin_pipeline(images, labels, config.replace(amp="off"), resolved, seconds)
                per_round[-1].update(fp32_img_per_s=fp32["img_per_s"], amp_speedup=ours["img_per_s"] / fp32["img_per_s"])
                say(f"round {number}: ours in fp32 {fp32['img_per_s']:.1f} images/s, in {precision} "
                    f"{ours['img_per_s']:.1f}: {per_round[-1]['amp_speedup']:.2f}x")
            say(
                f"round {number}: reference (PIL per sample, batch {baseline_batch_size}, fp32) "
                f"{baseline['img_per_s']:.1f} images/s; ours (batch {batch_size}, amp {ours['amp']}, {ours['memory_format']}) "
                f"{ours['img_per_s']:.1f} images/s: {per_round[-1]['speedup']:.1f}x"
            )
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

    import statistics

    speedups = [r["speedup"] for r in per_round]
    baseline_median = statistics.median(r["baseline_img_per_s"] for r in per_round)
    muffin_median = statistics.median(r["muffin_img_per_s"] for r in per_round)
    speedup = statistics.median(speedups)
    result = {
        "model": model,
        "image_size": image_size,
        "color_mode": color_mode,
        "device": str(resolved),
        "data": "synthetic" if synthetic else str(data_dir),
        "synthetic": synthetic,
        "n_images": len(chosen),
        "torch_threads": threads,
        "gflops": flops / 1e9,
        "rounds": per_round,
        "baseline_img_per_s": baseline_median,  # medians over the rounds
        "muffin_img_per_s": muffin_median,
        "speedup": speedup,  # median of the per-round speedups
        "speedup_min": min(speedups),
        "speedup_max": max(speedups),
        "baseline_gflop_per_s": baseline_median * flops / 1e9,
        "muffin_gflop_per_s": muffin_median * flops / 1e9,
        "baseline_batch_size": baseline_batch_size,
        "batch_size": batch_size,
        "decode_seconds": decode_seconds,
        "amp": ours["amp"],
        "amp_requested": amp,
        "precision": precision,
        "precision_reason": why,
        "memory_format": ours["memory_format"],
        "cpu": runtime.cpu_model(),
        "allocator_during_baseline": allocator_before,
        "allocator_during_muffin": runtime.allocator_state(),
    }
    if compare_fp32:
        amp_speedups = [r["amp_speedup"] for r in per_round]
        result.update(fp32_img_per_s=statistics.median(r["fp32_img_per_s"] for r in per_round),
                      amp_speedup=statistics.median(amp_speedups), amp_speedup_min=min(amp_speedups),
                      amp_speedup_max=max(amp_speedups))
        say(f"{precision} over fp32 (ours, same rounds): {result['amp_speedup']:.2f}x (median of {len(per_round)}; "
            f"{min(amp_speedups):.2f}-{max(amp_speedups):.2f}x) on {result['cpu'] if resolved.type == 'cpu' else resolved}")
    say(
        f"speedup {speedup:.1f}x (median of {plural(len(per_round), 'round')}; "
        f"{min(speedups):.1f}-{max(speedups):.1f}x): "
        f"{muffin_median:.1f} vs {baseline_median:.1f} images/s; "
        f"achieved {result['muffin_gflop_per_s']:.0f} vs {result['baseline_gflop_per_s']:.0f} GFLOP/s"
        + (" (SYNTHETIC images)" if synthetic else "")
    )
    return result


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODEL_NAMES, default="deeper_cnn",
                        help="architecture timed in both pipelines: %(choices)s (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=256, metavar="PX",
                        help="side of the square input in px (default: %(default)s)")
    parser.add_argument("--color-mode", choices=COLOR_MODES, default="grayscale",
                        help="%(choices)s (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None, help="a dataset folder (default: a synthetic set)")
    parser.add_argument("--n-images", type=int, default=256,
                        help="images drawn from DATA_DIR/train (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="batch size of both pipelines (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="about this long timed per pipeline and round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of both pipelines, median reported (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for both (default: torch's)")
    parser.add_argument("--amp", choices=runtime.AMP_MODES, default="auto",
                        help="ours' precision: auto (bf16 on Ampere+ GPUs and on CPUs with bf16 instructions where a probe "
                        "finds it faster, fp16 on older GPUs, else fp32), bf16, fp16 or off; with anything but fp32 "
                        "each round also times fp32 (default: auto)")


def bench_command(args: argparse.Namespace) -> int:
    result = run_benchmark(
        model=args.model,
        image_size=args.image_size,
        data_dir=args.data_dir,
        n_images=args.n_images,
        batch_size=args.batch_size,
        device=args.device,
        color_mode=args.color_mode,
        seconds=args.seconds,
        rounds=args.rounds,
        threads=args.threads,
        amp=args.amp,
    )
    print(json.dumps(result))
    return 0
