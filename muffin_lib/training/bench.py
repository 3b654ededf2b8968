"""Training throughput of the reference pipeline (ImageFolder + per-sample PIL transforms, batch 4, fp32,
Adam) and ours (``loop.TrainStep`` on pre-decoded images, batch 64, AMP where it pays), on the same images,
model and device, in alternating rounds; the last stdout line is one JSON object of the medians. Only the
first reference round has glibc's default allocator; later ones inherit ours' tuned one (a conservative
speedup)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from muffin_lib.config import COLOR_MODES, channels_for
from muffin_lib.data.imageio import preprocess_image
from muffin_lib.data.synthetic import make_synthetic_dataset
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
    """Warm up, then time as many ``step()`` calls (each returns its batch size) as fill ``seconds``."""
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


def _reference_pipeline(dataset, config: recipe.TrainConfig, device, seconds: float, batch_size: int) -> dict:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    model = build_model(config.model, in_channels=config.in_channels, image_size=config.image_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = (batch for _ in itertools.count() for batch in loader)  # epoch after epoch, reshuffled

    def step():
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
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
    train_step = loop.TrainStep(model, config, device, normalization, total_steps=10_000)
    images, labels = tensors.place_images(images, device), labels.to(device)
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


@dataclass
class BenchSettings:
    """What ``bench`` times: the CLI's flags; ``amp`` is ours' precision request (``TrainConfig.amp``)."""

    model: str = "deeper_cnn"
    image_size: int = 256
    data_dir: Path | None = None  # None: a synthetic set
    n_images: int = 256
    batch_size: int = 64
    device: str = "auto"
    color_mode: str = "grayscale"
    seconds: float = 20.0
    rounds: int = 3
    baseline_batch_size: int = 4
    threads: int | None = None
    seed: int = 0
    amp: str = "auto"


def _reference_set(train_dir: Path, s: BenchSettings):
    """The reference's ImageFolder (its per-sample transforms) and the ``n_images`` drawn from it."""
    from torchvision import datasets, transforms

    if not train_dir.is_dir():
        raise MuffinError(f"{train_dir} does not exist; --data-dir must hold train/<class>/ folders")
    channels = channels_for(s.color_mode)
    folder = datasets.ImageFolder(train_dir, transform=transforms.Compose(
        ([transforms.Grayscale()] if channels == 1 else [])
        + [transforms.Resize((s.image_size, s.image_size)), transforms.RandomHorizontalFlip(),
           transforms.RandomRotation(10), transforms.ToTensor(),
           transforms.Normalize([0.5] * channels, [0.5] * channels)]))
    if len(folder) == 0:
        raise MuffinError(f"no images under {train_dir}")
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(s.seed))
    return folder, order[: s.n_images].tolist()


def _round(number: int, subset, ours_data, config, device, s: BenchSettings, precision: str, say):
    """One round: the reference, then ours (and ours in fp32 when it trains in anything else)."""
    allocator = runtime.allocator_state()
    baseline = _reference_pipeline(subset, config, device, s.seconds, s.baseline_batch_size)
    ours = _muffin_pipeline(*ours_data, config, device, s.seconds)
    row = {"round": number, "baseline_img_per_s": baseline["img_per_s"],
           "muffin_img_per_s": ours["img_per_s"], "speedup": ours["img_per_s"] / baseline["img_per_s"],
           "baseline_allocator": allocator, "baseline_steps": baseline["steps"],
           "muffin_steps": ours["steps"]}
    if precision != "fp32":
        fp32 = _muffin_pipeline(*ours_data, config.replace(amp="off"), device, s.seconds)
        row.update(fp32_img_per_s=fp32["img_per_s"], amp_speedup=ours["img_per_s"] / fp32["img_per_s"])
        say(f"round {number}: ours in fp32 {fp32['img_per_s']:.1f} images/s, in {precision} "
            f"{ours['img_per_s']:.1f}: {row['amp_speedup']:.2f}x")
    say(f"round {number}: reference (PIL per sample, batch {s.baseline_batch_size}, fp32) "
        f"{baseline['img_per_s']:.1f} images/s; ours (batch {s.batch_size}, amp {ours['amp']}, "
        f"{ours['memory_format']}) {ours['img_per_s']:.1f} images/s: {row['speedup']:.1f}x")
    return row, ours


def _summary(facts: dict, per_round: list[dict], flops: float, tail: dict, say) -> dict:
    """The result: ``facts``, the rounds, their medians and spread, then ``tail``; the closing log lines."""
    speedups = [r["speedup"] for r in per_round]
    baseline = statistics.median(r["baseline_img_per_s"] for r in per_round)
    muffin = statistics.median(r["muffin_img_per_s"] for r in per_round)
    result = {**facts, "rounds": per_round, "baseline_img_per_s": baseline, "muffin_img_per_s": muffin,
              "speedup": statistics.median(speedups), "speedup_min": min(speedups),
              "speedup_max": max(speedups), "baseline_gflop_per_s": baseline * flops / 1e9,
              "muffin_gflop_per_s": muffin * flops / 1e9, **tail}
    if tail["precision"] != "fp32":
        ratios = [r["amp_speedup"] for r in per_round]
        result.update(fp32_img_per_s=statistics.median(r["fp32_img_per_s"] for r in per_round),
                      amp_speedup=statistics.median(ratios), amp_speedup_min=min(ratios),
                      amp_speedup_max=max(ratios))
        where = result["cpu"] if facts["device"] == "cpu" else facts["device"]
        say(f"{tail['precision']} over fp32 (ours, same rounds): {result['amp_speedup']:.2f}x (median of "
            f"{len(per_round)}; {min(ratios):.2f}-{max(ratios):.2f}x) on {where}")
    say(f"speedup {result['speedup']:.1f}x (median of {plural(len(per_round), 'round')}; "
        f"{min(speedups):.1f}-{max(speedups):.1f}x): {muffin:.1f} vs {baseline:.1f} images/s; "
        f"achieved {result['muffin_gflop_per_s']:.0f} vs {result['baseline_gflop_per_s']:.0f} GFLOP/s"
        + (" (SYNTHETIC images)" if facts["synthetic"] else ""))
    return result


def run_benchmark(settings: BenchSettings | None = None, log_to=print) -> dict:
    """Training images/s of the reference pipeline and ours (and of ours in fp32 when it trains in less)."""
    s = settings or BenchSettings()
    say, device = log_to or log.info, runtime.resolve_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    allocator_before = runtime.allocator_state()
    synthetic = s.data_dir is None
    temp_dir = Path(tempfile.mkdtemp(prefix="muffin-bench-")) if synthetic else None
    try:
        data_dir = s.data_dir
        if synthetic:
            data_dir = make_synthetic_dataset(temp_dir / "data", n_train=s.n_images, n_test=2,
                                              image_size=max(s.image_size, 64), seed=s.seed)
            say(f"no --data-dir: using a SYNTHETIC set of {s.n_images} generated images in {data_dir}")
        folder, chosen = _reference_set(Path(data_dir) / "train", s)
        flops = training_flops_per_image(s.model, channels_for(s.color_mode), s.image_size)
        threads = torch.get_num_threads()
        say(f"{s.model} at {s.image_size} px {s.color_mode}, {plural(len(chosen), 'image')} from {data_dir}, "
            f"device {device}, {plural(threads, 'CPU thread')}; {flops / 1e9:.2f} GFLOP per image per "
            "training step")
        started = time.perf_counter()
        paths = [folder.samples[i][0] for i in chosen]
        images = torch.stack([preprocess_image(path, s.image_size, s.color_mode) for path in paths])
        labels = torch.tensor([folder.samples[i][1] for i in chosen], dtype=torch.int64)
        decode_seconds = time.perf_counter() - started
        say(f"ours decodes once: {decode_seconds:.1f} s ({len(chosen) / decode_seconds:.0f} images/s, not "
            "timed below)")
        config = recipe.TrainConfig(model=s.model, image_size=s.image_size, color_mode=s.color_mode,
                                    batch_size=s.batch_size, seed=s.seed, amp=s.amp)
        precision = runtime.execution_key(s.amp, device, config).split("/")[1]
        why = runtime.precision_reason(s.amp, device, config)
        say(f"ours trains in {why}"
            + ("; every round also times fp32 for the precision speed-up" if precision != "fp32" else ""))
        subset = torch.utils.data.Subset(folder, chosen)
        rounds = [_round(n, subset, (images, labels), config, device, s, precision, say)
                  for n in range(1, max(1, s.rounds) + 1)]
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    ours = rounds[-1][1]
    facts = {"model": s.model, "image_size": s.image_size, "color_mode": s.color_mode, "device": str(device),
             "data": "synthetic" if synthetic else str(data_dir), "synthetic": synthetic,
             "n_images": len(chosen), "torch_threads": threads, "gflops": flops / 1e9}
    tail = {"baseline_batch_size": s.baseline_batch_size, "batch_size": s.batch_size,
            "decode_seconds": decode_seconds, "amp": ours["amp"], "amp_requested": s.amp,
            "precision": precision, "precision_reason": why, "memory_format": ours["memory_format"],
            "cpu": runtime.cpu_model(), "allocator_during_baseline": allocator_before,
            "allocator_during_muffin": runtime.allocator_state()}
    return _summary(facts, [row for row, _ in rounds], flops, tail, say)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", choices=MODEL_NAMES, default="deeper_cnn",
        help="architecture timed in both pipelines: %(choices)s (default: %(default)s)")
    add("--image-size", type=int, default=256, metavar="PX",
        help="side of the square input in px (default: %(default)s)")
    add("--color-mode", choices=COLOR_MODES, default="grayscale", help="%(choices)s (default: %(default)s)")
    add("--data-dir", type=Path, default=None, help="a dataset folder (default: a synthetic set)")
    add("--n-images", type=int, default=256, help="images drawn from DATA_DIR/train (default: %(default)s)")
    add("--batch-size", type=int, default=64, help="batch size of both pipelines (default: %(default)s)")
    add("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: %(default)s)")
    add("--seconds", type=float, default=20.0,
        help="about this long timed per pipeline and round (default: %(default)s)")
    add("--rounds", type=int, default=3,
        help="alternating rounds of both pipelines, median reported (default: %(default)s)")
    add("--threads", type=int, default=None, help="torch CPU threads for both (default: torch's)")
    add("--amp", choices=runtime.AMP_MODES, default="auto",
        help="ours' precision: auto (bf16 on Ampere+ GPUs and on CPUs with bf16 instructions where a probe "
        "finds it faster, fp16 on older GPUs, else fp32), bf16, fp16 or off; with anything but fp32 each "
        "round also times fp32 (default: auto)")


def bench_command(args: argparse.Namespace) -> int:
    names = [f.name for f in dataclasses.fields(BenchSettings) if hasattr(args, f.name)]
    print(json.dumps(run_benchmark(BenchSettings(**{name: getattr(args, name) for name in names}))))
    return 0
