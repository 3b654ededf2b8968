"""Checkpoints: a trained model with everything needed to use it again (config, normalisation, class
names, history, versions), written atomically and checked when read back."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from muffin_lib.config import CLASSES
from muffin_lib.errors import MuffinError
from muffin_lib.files import write_atomic
from muffin_lib.training import runtime
from muffin_lib.training.models import ARCHITECTURE_VERSIONS, build_model

CHECKPOINT_FORMAT = "muffin-checkpoint"
CHECKPOINT_VERSION = 1


def _versions(model_name: str) -> dict:
    import importlib.metadata

    import torchvision

    from muffin_lib import __version__

    versions = {"muffin_lib": str(__version__), "torch": str(torch.__version__),
                "torchvision": str(torchvision.__version__)}
    if model_name == "transfer":  # timm's network
        versions["timm"] = importlib.metadata.version("timm")
    return versions


def save_checkpoint(path, fit_result, *, class_names=CLASSES, extra: dict | None = None) -> Path:
    """Write ``fit_result``'s model (a ``loop.FitResult``) and all it needs to be used again, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config, model = fit_result.config, fit_result.model
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "model_name": config.model,
        "architecture": ARCHITECTURE_VERSIONS.get(config.model),  # e.g. transfer: tf_efficientnet_lite0
        "config": config.to_dict(), "config_key": config.key(), "image_size": config.image_size,
        "color_mode": config.color_mode, "in_channels": config.in_channels,
        "num_classes": getattr(model, "muffin_spec", {}).get("num_classes", len(class_names)),
        "normalization": {k: list(v) for k, v in fit_result.normalization.items()},
        "class_names": list(class_names), "history": [dict(h) for h in fit_result.history],
        "best_epoch": fit_result.best_epoch, "trained_on": fit_result.device, "amp": fit_result.amp,
        "versions": _versions(config.model), "extra": dict(extra or {}), "state_dict": state,
    }
    return write_atomic(path, lambda temp: torch.save(checkpoint, temp))


def load_checkpoint(path, device="auto") -> tuple[nn.Module, dict]:
    """The model (eval mode, on ``device``) and the checkpoint dict written by ``save_checkpoint``."""
    path = Path(path)
    if not path.is_file():
        raise MuffinError(f"checkpoint {path} does not exist; train one with `python -m muffin_lib train ... "
                          f"--out {path}`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise MuffinError(f"checkpoint {path} could not be read ({type(error).__name__}: "
                          f"{str(error)[:200]}); it is damaged or not a PyTorch file: train again to "
                          "recreate it") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise MuffinError(f"{path} is a PyTorch file but not a muffin checkpoint "
                          f"(no format={CHECKPOINT_FORMAT!r})")
    if checkpoint.get("format_version", 0) > CHECKPOINT_VERSION:
        raise MuffinError(f"checkpoint {path} has format version {checkpoint['format_version']}, newer "
                          f"than this muffin_lib understands ({CHECKPOINT_VERSION}); update muffin_lib")
    # The architecture only: the weights come from the checkpoint (transfer needs no weights' package).
    model = build_model(checkpoint["model_name"], in_channels=checkpoint["in_channels"],
                        image_size=checkpoint["image_size"], num_classes=checkpoint["num_classes"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        architecture = ARCHITECTURE_VERSIONS.get(checkpoint["model_name"])
        if architecture is not None and checkpoint.get("architecture") != architecture:
            raise MuffinError(f"checkpoint {path} holds an older network of model "
                              f"{checkpoint['model_name']!r} (this muffin_lib's is {architecture}); train it "
                              "again") from error
        raise MuffinError(f"checkpoint {path}: weights do not fit model {checkpoint['model_name']!r} "
                          f"({error})") from error
    device = runtime.resolve_device(device)
    layout = runtime.memory_format_for(device, checkpoint["config"].get("channels_last", False))
    model.to(device, memory_format=layout)
    model.eval()
    return model, checkpoint
