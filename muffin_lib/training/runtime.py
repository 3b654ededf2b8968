"""Where and how training runs: device choice, seeding, the CPU allocator, an environment summary, and each
device type's autocast precision (``resolve_amp``) and memory format (``memory_format_for``)."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import random
import sys

import numpy as np
import torch

from muffin_lib.errors import MuffinError
from muffin_lib.text import plural

log = logging.getLogger(__name__)

# With glibc's defaults every large activation/gradient buffer is a fresh mmap whose pages the kernel must
# fault in and zero each step (benchmarks/README.md); serving them from an untrimmed heap keeps them mapped.
ALLOCATOR_SETTINGS: dict[str, int] = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30, "M_TOP_PAD": 256 << 20}
_MALLOPT_CODES = {"M_MMAP_MAX": -4, "M_TRIM_THRESHOLD": -1, "M_TOP_PAD": -2}  # glibc's malloc.h
_allocator_state: dict | None = None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` = CUDA, else Apple MPS, else CPU; an explicit choice that is not available is an error."""
    device = str(device) if isinstance(device, torch.device) else device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():  # with its index: torch.device("cuda") != a tensor's "cuda:0"
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MuffinError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU "
                              f"(torch {torch.__version__}); use --device cpu or --device auto")
        try:
            resolved = torch.device(name)
        except RuntimeError as error:
            raise MuffinError(f"device {device!r} is not a valid CUDA device name ({error})") from error
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise MuffinError(f"device {device!r} does not exist: this machine has "
                              f"{plural(count, 'CUDA GPU')}")
        return resolved if resolved.index is not None else torch.device("cuda", torch.cuda.current_device())
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise MuffinError("device 'mps' was asked for but Apple MPS is not available; use --device cpu")
        return torch.device("mps")
    raise MuffinError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_cpu_allocator(enable: bool = True) -> bool:
    """Apply ``ALLOCATOR_SETTINGS`` with glibc's ``mallopt`` for the life of the process (idempotent); True
    when in effect. ``MUFFIN_TUNE_MALLOC=0`` (or ``enable=False``) leaves the allocator alone."""
    global _allocator_state
    if _allocator_state is not None:
        return _allocator_state["tuned"]
    if not enable or _tuning_disabled():
        return False  # not recorded: a later call with enable=True may still tune
    libc = _glibc()
    if libc is None:
        _allocator_state = {"tuned": False, "reason": "not Linux/glibc"}
        return False
    applied = {name: value for name, value in ALLOCATOR_SETTINGS.items()
               if libc.mallopt(_MALLOPT_CODES[name], value) == 1}
    _allocator_state = {"tuned": bool(applied), "settings": applied}
    if applied:
        log.info("CPU allocator tuned: %s", ", ".join(f"{k}={v}" for k, v in applied.items()))
    return bool(applied)


def _tuning_disabled() -> bool:
    return os.environ.get("MUFFIN_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off")


def allocator_state() -> str:
    if _allocator_state is None:
        return "disabled by MUFFIN_TUNE_MALLOC=0" if _tuning_disabled() else "glibc defaults (not tuned yet)"
    if _allocator_state["tuned"]:
        return "tuned: " + ", ".join(f"{k}={v}" for k, v in _allocator_state["settings"].items())
    return f"not tuned ({_allocator_state.get('reason', 'mallopt refused')})"


def describe_environment(device: str | torch.device = "auto") -> dict:
    """What this run uses: versions, device, GPU, CPUs, RAM and the allocator state (JSON-friendly)."""
    import torchvision

    resolved = resolve_device(device)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = None
    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "device": str(resolved), "cpu": cpu_model(),
            "gpu_name": None, "gpu_memory_gb": None, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "ram_gb": round(ram / 2**30, 1) if ram else None,
            "cpu_allocator": allocator_state(),
            "memory_format": memory_format_name(resolved)}  # with TrainConfig's default (channels-last)
    if resolved.type == "cuda":
        props = torch.cuda.get_device_properties(resolved)
        info.update(gpu_name=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    bf16_supported=native_bf16(resolved))
    elif resolved.type == "mps":
        info["gpu_name"] = "Apple MPS"
    else:
        info["cpu_bf16_autocast"] = cpu_bf16_choice()[1]  # amp="auto" here, before a model's probe
    return info


AMP_MODES = ("auto", "bf16", "fp16", "off")


def native_bf16(device: torch.device) -> bool:
    """bf16 tensor cores (Ampere, 8.0+); ``is_bf16_supported()`` says yes on a T4, where it is emulated."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name (e.g. "Intel(R) Xeon(R) Processor"), for the record beside every timing."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_generation() -> str:
    """ "family F model M" from /proc/cpuinfo: tells a Zen 4 from a Zen 5 of the same model name."""
    return f"family {_cpuinfo_field('cpu family') or '?'} model {_cpuinfo_field('model') or '?'}"


def _cpuinfo_field(name: str) -> str | None:
    """Field ``name`` of the first processor in /proc/cpuinfo; None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_bf16_choice(workload=None) -> tuple[bool, str]:
    """Whether ``amp="auto"`` trains ``workload`` (a ``TrainConfig``) in bf16 on this CPU, and why. CPU bf16
    pays only with native instructions, and not always, so ``bf16_probe`` times the workload once per
    machine (without one the instructions decide); ``MUFFIN_CPU_BF16=0``/``1`` overrides everything."""
    forced = os.environ.get("MUFFIN_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1", f"{'bf16' if forced == '1' else 'fp32'}: MUFFIN_CPU_BF16={forced}"
    from muffin_lib.training import bf16_probe

    flags = cpu_flags()
    present = [flag for flag in bf16_probe.BF16_FLAGS if flag in flags]
    if not present:
        return False, "fp32: this CPU has no native bf16 instructions (avx512_bf16 or amx_bf16)"
    if not torch.backends.mkldnn.is_available():
        return False, "fp32: this torch build has no oneDNN, which runs bf16 convolutions on the CPU"
    if workload is None:
        return True, f"bf16: {', '.join(present)} (no model given to probe)"
    verdict = bf16_probe.cpu_bf16_verdict(workload.model, workload.in_channels, workload.image_size,
                                          channels_last_for("cpu", workload.channels_last),
                                          f"{cpu_model()} {cpu_generation()}", flags,
                                          pretrained=getattr(workload, "pretrained", False))
    return verdict.use, verdict.reason


def policy_device_type(device: str | torch.device) -> str:
    """The device type whose rules apply to ``device``: its own (tests patch it to run MPS's rules)."""
    return torch.device(device).type


def _torch_at_least(major: int, minor: int) -> bool:
    release = torch.__version__.split("+")[0].split(".")
    try:
        return (int(release[0]), int(release[1])) >= (major, minor)
    except (IndexError, ValueError):
        return True


# amp="auto" on Apple MPS is fp32: autocast there needs torch >= 2.5, GradScaler zeroed fp16/bf16 gradients
# until pytorch/pytorch#184286 (2026), and no Mac has measured fp16 to pay for these small CNNs.
MPS_AUTO_AMP_REASON = (
    "amp 'auto' trains in fp32 on Apple MPS: autocast there needs torch >= 2.5 and its fp16 GradScaler was "
    "broken until recently (pytorch/pytorch#142397, #184286); amp='fp16' asks for it"
)


def resolve_amp(amp: str, device: torch.device, workload=None) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = float32); a CPU's "auto": ``cpu_bf16_choice``."""
    if amp not in AMP_MODES:
        raise MuffinError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off" or _linear_probe(workload):
        return None
    kind = policy_device_type(device)
    if kind == "cuda":
        bf16_ok = native_bf16(device)
        if amp == "auto":
            return torch.bfloat16 if bf16_ok else torch.float16
        if amp == "bf16" and not bf16_ok:
            raise MuffinError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16 support; "
                              "use --amp fp16")
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if kind == "cpu":
        if amp == "fp16":
            raise MuffinError("amp='fp16' needs a CUDA GPU; on the CPU use amp='bf16' or 'off'")
        if amp == "auto":
            return torch.bfloat16 if cpu_bf16_choice(workload)[0] else None
        return torch.bfloat16 if amp == "bf16" else None
    # MPS: fp32 for "auto" (MPS_AUTO_AMP_REASON); explicit choices where torch has autocast for MPS.
    if amp == "auto":
        return None
    if not _torch_at_least(2, 5):
        raise MuffinError(f"amp={amp!r} on Apple MPS needs torch >= 2.5 (autocast for MPS), this is torch "
                          f"{torch.__version__}; use amp='auto' or 'off' (fp32), or upgrade torch")
    return torch.bfloat16 if amp == "bf16" else torch.float16


# Device types that stay contiguous (NCHW) even when channels-last is asked for, and why (fit logs it): on
# every torch this project allows, MPS's channels-last conv2d backward is slow and some of its kernels wrong.
CHANNELS_LAST_AVOIDED = {
    "mps": ("memory format contiguous (NCHW) on Apple MPS, not channels-last: there channels-last conv2d "
            "backward is about 30x slower (pytorch/pytorch#193349) and a channel slice of a channels-last "
            "tensor gave wrong conv2d results (#180984)"),
}


def channels_last_for(device: str | torch.device, requested: bool = True) -> bool:
    """Whether ``device`` uses channels-last: if ``requested``, unless in ``CHANNELS_LAST_AVOIDED``."""
    return bool(requested) and policy_device_type(device) not in CHANNELS_LAST_AVOIDED


def memory_format_for(device: str | torch.device, requested: bool = True) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format``, as ``channels_last_for`` decides."""
    return torch.channels_last if channels_last_for(device, requested) else torch.contiguous_format


def memory_format_name(device: str | torch.device, requested: bool = True) -> str:
    """``memory_format_for``'s choice as reports name it: "channels_last" or "contiguous"."""
    return "channels_last" if channels_last_for(device, requested) else "contiguous"


def device_notes(device: str | torch.device, amp: str, channels_last: bool) -> list[str]:
    """Why ``device`` trains otherwise than asked (``amp``, ``channels_last``): a sentence each, for fit."""
    kind = policy_device_type(device)
    notes = []
    if channels_last and not channels_last_for(device, channels_last):
        notes.append(CHANNELS_LAST_AVOIDED[kind])
    if kind == "mps" and amp == "auto":
        notes.append(MPS_AUTO_AMP_REASON)
    return notes


_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _linear_probe(workload) -> bool:
    """A linear probe (``train_layers="head"``) is fp32 whatever ``amp`` says: a linear head on features."""
    return getattr(workload, "train_layers", "all") == "head"


def precision_reason(amp: str, device: str | torch.device = "auto", workload=None) -> str:
    """The precision ``amp`` trains ``workload`` in on ``device``, and why: e.g. "fp32: amp off"."""
    device = resolve_device(device)
    name = _PRECISION_NAMES[resolve_amp(amp, device, workload)]
    if _linear_probe(workload):
        return "fp32: a linear probe (features computed once, only the head trains)"
    if amp != "auto":
        return f"{name}: amp {amp}"
    kind = policy_device_type(device)
    if kind == "cpu":
        return cpu_bf16_choice(workload)[1]
    if kind == "cuda":
        why = "bf16 tensor cores" if name == "bf16" else "no native bf16 (before Ampere)"
        return f"{name}: {torch.cuda.get_device_name(device)}, {why}"
    return f"{name}: Apple MPS trains in fp32 under amp auto"


def execution_key(amp: str, device: str | torch.device = "auto", workload=None) -> str:
    """``"<device type>/<precision>"`` a run trains in, e.g. ``cuda/bf16`` (trial keys, checkpoint reuse)."""
    device = resolve_device(device)
    return f"{device.type}/{_PRECISION_NAMES[resolve_amp(amp, device, workload)]}"
