"""Whether CPU bf16 autocast is faster, and right, for one model here: a few fp32 and bf16 training steps
(one step's loss and gradients compared), its verdict cached per machine and workload in the user's cache
directory, so every process reads the same answer and a result's key names the precision it trained in."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from muffin_lib.config import user_cache_dir
from muffin_lib.files import write_text_atomic
from muffin_lib.training.models import ARCHITECTURE_VERSIONS, build_model

log = logging.getLogger(__name__)

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # native bf16 instructions; without them bf16 is emulated and slow
MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this much: below it the gain is within timing noise
# One bf16 step against fp32 (same weights, batch, dropout): the study's models agree to 0.05 % and 5-14 %
# on a Zen 4, a wrong bf16 kernel (pytorch/pytorch#163347) is off by about 100 %.
LOSS_TOLERANCE = 0.02
GRAD_TOLERANCE = 0.25
PROBE_BATCH = 32
PROBE_STEPS = 3
PROBE_ROUNDS = 2
PROBE_VERSION = 1


@dataclass(frozen=True)
class Bf16Verdict:
    """The probe's result for one model and input size: ``use`` bf16 or not, and why in one line."""

    use: bool
    reason: str
    speedup: float | None = None
    loss_error: float | None = None
    grad_error: float | None = None


def _cache_file() -> Path:
    return user_cache_dir() / "bf16_probe.json"


def _machine_key(cpu: str, flags: frozenset[str]) -> str:
    present = ",".join(f for f in BF16_FLAGS if f in flags)
    return f"{cpu} [{present}] torch {torch.__version__} v{PROBE_VERSION}"


def _inputs(model_name: str, in_channels: int, image_size: int, channels_last: bool, pretrained: bool):
    torch.manual_seed(0)
    # A fine-tuned network is probed from its pretrained weights: random ones make deep nets' gradients
    # chaotic.
    model = build_model(model_name, in_channels=in_channels, image_size=image_size, pretrained=pretrained)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout).train()
    x = torch.randn(PROBE_BATCH, in_channels, image_size, image_size).contiguous(memory_format=layout)
    y = torch.randint(0, 2, (PROBE_BATCH,))
    return model, x, y


def _loss_and_grad(model, x, y, bf16: bool) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks in both precisions
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return loss.item(), torch.cat(grads).float()


def _steps_per_second(model, x, y, bf16: bool) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _loss_and_grad(model, x, y, bf16)  # warm-up: oneDNN builds its kernels on the first call
    optimizer.step()
    started = time.perf_counter()
    for _ in range(PROBE_STEPS):
        _loss_and_grad(model, x, y, bf16)
        optimizer.step()
    return PROBE_STEPS / (time.perf_counter() - started)


def measure(model_name: str, in_channels: int, image_size: int, channels_last: bool = True,
            pretrained: bool = False) -> Bf16Verdict:
    """Run the probe (no cache): agreement of one step, then fp32 vs bf16 speed in alternating rounds."""
    model, x, y = _inputs(model_name, in_channels, image_size, channels_last, pretrained)
    loss32, grad32 = _loss_and_grad(model, x, y, bf16=False)
    loss16, grad16 = _loss_and_grad(model, x, y, bf16=True)
    loss_error = abs(loss16 - loss32) / max(abs(loss32), 1e-6)
    grad_error = float((grad16 - grad32).norm() / grad32.norm().clamp_min(1e-12))
    agree = loss_error <= LOSS_TOLERANCE and grad_error <= GRAD_TOLERANCE and torch.isfinite(grad16).all()
    if not agree:
        return Bf16Verdict(False, f"fp32: bf16 disagrees with fp32 (loss {loss_error:.1%}, gradients "
                           f"{grad_error:.1%}; tolerance {LOSS_TOLERANCE:.0%} / {GRAD_TOLERANCE:.0%})",
                           loss_error=loss_error, grad_error=grad_error)
    rates = {False: [], True: []}
    for _ in range(PROBE_ROUNDS):
        for bf16 in (False, True):
            rates[bf16].append(_steps_per_second(model, x, y, bf16))
    speedup = max(rates[True]) / max(rates[False])
    use = speedup >= MIN_SPEEDUP
    verdict = "bf16" if use else "fp32"
    tail = ", parity ok" if use else f" (needs {MIN_SPEEDUP:g}x)"
    reason = f"{verdict}: probe {speedup:.2f}x bf16 vs fp32{tail}"
    return Bf16Verdict(use, reason, speedup=speedup, loss_error=loss_error, grad_error=grad_error)


def cpu_bf16_verdict(model_name: str, in_channels: int, image_size: int, channels_last: bool,
                     cpu: str, flags: frozenset[str], pretrained: bool = False) -> Bf16Verdict:
    """The cached verdict for this machine (``cpu``: model name, generation) and workload, else probed."""
    present = [f for f in BF16_FLAGS if f in flags]
    machine = _machine_key(cpu, flags)
    # A network replaced under the same name (ARCHITECTURE_VERSIONS) is probed again, not given the old one.
    version = ARCHITECTURE_VERSIONS.get(model_name)
    network = f"{model_name}/{version}" if version else model_name
    workload = f"{network} {in_channels}x{image_size}x{image_size} " + ("nhwc" if channels_last else "nchw")
    workload += " pretrained" if pretrained else ""
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(machine, {}).get(workload)
    if entry is not None:
        return Bf16Verdict(**entry)
    log.info("probing bf16 vs fp32 for %s on %s (a few training steps, once per machine)", workload, cpu)
    verdict = measure(model_name, in_channels, image_size, channels_last, pretrained)
    verdict = Bf16Verdict(**{**asdict(verdict), "reason": f"{verdict.reason}; {', '.join(present)}"})
    log.info("bf16 probe for %s: %s", workload, verdict.reason)
    cached.setdefault(machine, {})[workload] = asdict(verdict)
    try:
        write_text_atomic(path, json.dumps(cached, indent=1, sort_keys=True))
    except OSError as error:  # a read-only home: the verdict still holds for this process
        log.warning("could not cache the bf16 probe in %s (%s)", path, error)
    return verdict
