"""What is the network looking at? Grad-CAM heat maps (Captum's ``LayerGradCam``) and their overlays: bright
regions raised the class score. The layer is the model's last whose output is a map of at least 2 x 2,
found by one forward pass, so the same code serves every model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from muffin_lib.config import CLASSES
from muffin_lib.training.tensors import Normalizer, model_spec, uses_channels_last


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The last module (in execution order) whose output is a feature map of at least 2 x 2."""
    spec = model_spec(model)
    device = next(model.parameters()).device
    outputs: list[nn.Module] = []

    def record(module, inputs, output) -> None:
        if torch.is_tensor(output) and output.dim() == 4 and min(output.shape[-2:]) >= 2:
            outputs.append(module)

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, spec["in_channels"], spec["image_size"], spec["image_size"], device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return outputs[-1]


def gradcam(model: nn.Module, images: torch.Tensor, normalization: dict, *, target: int | None = None,
            batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (N x H x W, 0-1) of uint8 ``images`` for ``target`` (default: predicted); probabilities."""
    from captum.attr import LayerAttribution, LayerGradCam

    device = next(model.parameters()).device
    normalize = Normalizer(normalization, device, uses_channels_last(model))
    cam = LayerGradCam(model, gradcam_layer(model))
    model.eval()
    heats, probabilities = [], []
    for start in range(0, images.shape[0], batch_size):
        x = normalize(images[start : start + batch_size].to(device))
        with torch.no_grad():
            proba = torch.softmax(model(x).float(), dim=1)
        targets = proba.argmax(dim=1) if target is None else torch.full((len(x),), target, device=device)
        attribution = cam.attribute(x, target=targets, relu_attributions=True)
        heat = LayerAttribution.interpolate(attribution, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        heat = heat[:, 0].detach().float()
        peak = heat.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        heats.append((heat / peak).clamp(0, 1).cpu().numpy())
        probabilities.append(proba.cpu().numpy())
    return np.concatenate(heats), np.concatenate(probabilities)


def as_rgb(image: torch.Tensor) -> np.ndarray:
    """uint8 C x H x W (grey or colour) -> uint8 H x W x 3, as the model saw it."""
    picture = image.detach().cpu().numpy().transpose(1, 2, 0)
    return np.repeat(picture, 3, axis=2) if picture.shape[2] == 1 else picture


def overlay(image: torch.Tensor, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 H x W x 3 picture: ``image`` (uint8 C x H x W, grey or colour) under the heat map."""
    from matplotlib import colormaps

    picture = as_rgb(image).astype(np.float32) / 255.0
    colour = colormaps["jet"](heat)[..., :3]
    return (255 * ((1 - alpha) * picture + alpha * colour)).round().clip(0, 255).astype(np.uint8)


def caption(probabilities: np.ndarray, true_label: int | None = None, class_names=CLASSES) -> str:
    """ "muffin 0.93" (and "true: chihuahua" when it is wrong)."""
    k = int(np.argmax(probabilities))
    text = f"{class_names[k]} {probabilities[k]:.2f}"
    if true_label is not None and true_label != k:
        text += f" (true: {class_names[true_label]})"
    return text


def validation_examples(run, data_dir, work_dir, n: int = 6) -> list[dict]:
    """The ``n`` most confident errors and right answers of a ``train.TrainRun`` on validation images."""
    from muffin_lib.data.cache import load_images

    config = run.config
    cache = load_images(data_dir, work_dir, "train", config.image_size, config.color_mode, progress=False)
    row_of = {path: i for i, path in enumerate(cache.relpaths)}
    shown = run.val_predictions
    labels, predicted = np.asarray(shown["labels"]), np.asarray(shown["predicted"])
    confidence = np.asarray(shown["confidence"])  # the probability of the predicted class
    class_names = shown.get("class_names", CLASSES)
    picked = []
    for subset in (np.flatnonzero(predicted != labels), np.flatnonzero(predicted == labels)):
        picked += subset[np.argsort(-confidence[subset], kind="stable")][:n].tolist()
    if not picked:
        return []
    images = cache.images[[row_of[shown["relpaths"][i]] for i in picked]]
    heats, probabilities = gradcam(run.model, images, run.normalization)
    return [
        {"image": image, "heat": heat, "caption": caption(p, int(labels[i]), class_names),
         "wrong": bool(predicted[i] != labels[i])}
        for i, image, heat, p in zip(picked, images, heats, probabilities, strict=True)
    ]
