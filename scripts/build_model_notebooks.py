"""Write notebooks 03-05 from one template: the three training notebooks differ only in the model.

    python scripts/build_model_notebooks.py          # rewrite notebooks/03_*.ipynb .. 05_*.ipynb
    python scripts/build_model_notebooks.py --check  # exit 1 when a committed notebook differs

Edit the template here, never the generated files (tests/test_study_notebooks.py checks they match).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from muffin_lib.study.notebook import colab_badge, colab_install_source  # noqa: E402
from muffin_lib.training.engine import TrainConfig  # noqa: E402

MODELS = {
    "03_simple_cnn": (
        "simple_cnn",
        "Training a simple CNN",
        "The smallest of the three networks: a few convolution-ReLU-max-pooling stages and a fully connected\n"
        "classifier, the first model of the reference study with its bugs fixed. It sets the bar the deeper\n"
        "models have to clear.",
    ),
    "04_deeper_cnn": (
        "deeper_cnn",
        "Training a deeper CNN",
        "More convolution stages with batch normalisation and dropout: more capacity than the simple CNN, and\n"
        "more ways to overfit 3,000 training photos. Same data, split, schedule and evaluation as notebook 03,\n"
        "so the numbers are directly comparable.",
    ),
    "05_resnet_like": (
        "resnet_like",
        "Training a ResNet-like network",
        "A small residual network: stacks of basic blocks with skip connections, which keep gradients flowing\n"
        "through a deeper network, and global average pooling instead of a large fully connected layer. Same\n"
        "data, split, schedule and evaluation as notebooks 03 and 04.",
    ),
}

NBMAKE_MOCK = {"data_dir": "../work/nbmake/data", "profile": "smoke", "work_dir": "../work/nbmake/work"}

PARAMETERS = '''data_dir = "../data/muffin-vs-chihuahua"  # the dataset (run 00_setup first)
work_dir = "../work"  # shared by the series; the checkpoint goes to work_dir/checkpoints/{model}.pt
profile = "full"  # "full" or "smoke"
seed = 0  # model initialisation and batch order
image_size = {d.image_size}  # shorter side scaled to image_size, then a centre crop
color_mode = "{d.color_mode}"  # "rgb" or "grayscale"
device = "auto"  # "auto" (a GPU when there is one), "cuda", "mps" or "cpu"
epochs = {d.epochs}
lr = {d.lr:g}  # peak learning rate of the one-cycle schedule (AdamW)
batch_size = {d.batch_size}
augment = "{d.augment}"  # "none", "flip_rotate" or "flip_rotate_crop"
label_smoothing = {d.label_smoothing}  # share of the target spread over the other class (0: plain cross-entropy)
val_fraction = 0.2  # share of the training split held out for validation (twin groups kept whole)
n_misclassified = 12  # wrong validation predictions shown'''


def cells(name: str, model: str, title: str, intro: str) -> list:
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    number = name[:2]
    install = code(colab_install_source(), metadata={"tags": ["colab-install"]})
    parameters = code(PARAMETERS.format(model=model, d=TrainConfig()), metadata={"tags": ["parameters"], "nbmake": {"mock": NBMAKE_MOCK}})
    return [
        md(
            f"{colab_badge(f'notebooks/{name}.ipynb')}\n\n# {number} · {title} (`{model}`)\n\n{intro}\n\n"
            "The notebook trains on the fit part of the saved split, validates every epoch on the hold-out part,\n"
            f"and keeps the checkpoint in `work_dir/checkpoints/{model}.pt`. Everything it reports comes from\n"
            "the validation images; no twin of a validation photo is trained on (the split keeps near-duplicates\n"
            "together). The test split stays untouched until notebook 09 scores every model once. Running it\n"
            "again with the same parameters, data and code reuses the checkpoint instead of training again."
        ),
        install,
        md(
            "## Parameters\n\nChange them here, or pass them from outside: `papermill NB.ipynb OUT.ipynb -p epochs 5`, or\n"
            "`python -m muffin_lib run -p epochs 5` for the whole series. `profile = \"smoke\"` shrinks everything\n"
            "(tiny images, one epoch, two folds) to check that the notebook runs; `\"full\"` is the study."
        ),
        parameters,
        code(
            "from muffin_lib.study import notebook\n\n"
            "params = notebook.start(\n"
            f'    "{name}",\n'
            "    profile,\n"
            "    dict(data_dir=data_dir, work_dir=work_dir, seed=seed, image_size=image_size, color_mode=color_mode,\n"
            "         device=device, epochs=epochs, lr=lr, batch_size=batch_size, augment=augment, label_smoothing=label_smoothing,\n"
            "         val_fraction=val_fraction, n_misclassified=n_misclassified),\n"
            ")\n"
            "synthetic = notebook.require_data(params.data_dir)\n"
            "params"
        ),
        md("## 1. The network"),
        code(
            "from muffin_lib.training import models\n\n"
            f'config = notebook.train_config(params, "{model}")\n'
            "print(models.build_model(config.model, in_channels=config.in_channels, image_size=config.image_size))\n"
            "notebook.display_markdown(models.describe(config.model, config.in_channels, config.image_size))"
        ),
        md(
            "## 2. Training\n\nThe parameters' defaults are the library's recipe (`engine.TrainConfig`): 128 px colour, 15 epochs of\n"
            "AdamW with a one-cycle schedule peaking at 3e-3, random-resized-crop, flip and rotation, label smoothing\n"
            "0.1. `train_model` loads the image cache and the saved twin-grouped split (both made on demand),\n"
            "augments each batch on the device, and validates after every epoch. When `work_dir` already holds a checkpoint of this exact configuration on these data, made by\n"
            "the same code at the same precision, it is loaded instead."
        ),
        code(
            "from muffin_lib.study import report\n"
            "from muffin_lib.training import train\n\n"
            "run = train.train_model(\n"
            "    params.data_dir, params.work_dir, config, val_fraction=params.val_fraction, device=params.device,\n"
            "    checkpoint_path=notebook.checkpoint_path(params.work_dir, config.model),\n"
            ")\n"
            "notebook.display_markdown(report.training_note(run))"
        ),
        md(
            "## 3. Learning curves\n\nCross-entropy and zero-one loss per epoch on the (augmented) training batches and on the validation\n"
            "images. A validation curve that turns up while the training curve keeps falling is overfitting."
        ),
        code(
            "from muffin_lib.study import plots\n\n"
            "figure = plots.learning_curves(run.history, title=f\"{config.model}: learning curves\")\n"
            "notebook.show_figure(figure, params, \"learning_curves\")\n"
            "curve_finding = report.curve_finding(config.model, run.history)\n"
            "notebook.display_markdown(curve_finding)"
        ),
        md(
            "## 4. Validation errors\n\nZero-one loss on the validation images with its 95% Wilson interval (they are a sample; the\n"
            "interval says how much the number could move on another sample of the same size), the confusion matrix\n"
            "and precision/recall per class."
        ),
        code(
            "validation = report.validation_summary(run.val_predictions)\n"
            "figure = plots.confusion_matrix(validation[\"confusion\"], title=f\"{config.model}: validation confusion matrix\")\n"
            "notebook.show_figure(figure, params, \"confusion_matrix\")\n"
            "validation_finding = report.validation_finding(config.model, validation)\n"
            "notebook.display_markdown(validation_finding)\n"
            "report.per_class_frame(validation[\"per_class\"])"
        ),
        md(
            "## 5. What it gets wrong\n\nThe validation photos the model misclassified with the highest confidence, titled *true → predicted\n"
            "(probability of the predicted class)*."
        ),
        code(
            "wrong = report.most_confident_errors(run.val_predictions, params.n_misclassified)\n"
            "figure = plots.errors_grid(params.data_dir, wrong, title=f\"{config.model}: the most confident validation errors\")\n"
            "notebook.show_figure(figure, params, \"misclassified\")"
        ),
        md(
            "## 6. What the network looks at\n\nGrad-CAM (Captum's `LayerGradCam` on the last feature map) for the most confident\n"
            "errors (red titles) and the most confident right answers on the validation photos: bright regions raised the\n"
            "score of the predicted class. A model that looks at the dog's face or the muffin's top has learnt the task;\n"
            "one that looks at the background or the packaging has learnt a shortcut."
        ),
        code(
            "from muffin_lib.training import explain\n\n"
            "examples = explain.validation_examples(run, params.data_dir, params.work_dir, n=params.n_misclassified // 2)\n"
            "figure = plots.gradcam_grid(examples, title=f\"{config.model}: where it looked (Grad-CAM)\")\n"
            "notebook.show_figure(figure, params, \"gradcam\")"
        ),
        md("## 7. Results\n\nSaved to `work_dir/results/` for the series summary and notebook 09."),
        code(
            "findings = [curve_finding, validation_finding]\n"
            "notebook.save_results(params, report.model_results(run, validation, findings, synthetic))\n"
            "notebook.display_findings(findings)"
        ),
    ]


def build(name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nb.cells = cells(name, *MODELS[name])
    for cell in nb.cells:  # stable ids: a rebuild changes nothing unless the template did
        cell["id"] = f"{name[:2]}-{nb.cells.index(cell):02d}"
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report differences instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name in MODELS:
        path = ROOT / "notebooks" / f"{name}.ipynb"
        text = nbformat.writes(build(name)) + "\n"
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print("out of date (run python scripts/build_model_notebooks.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
