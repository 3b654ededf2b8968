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
# Notebook 03 writes the training loop out (section 2) for a few epochs before train_model trains the recipe.
LOOP_PARAMETER = "\nloop_epochs = 2  # epochs of the training loop written out in section 2 (train_model then trains the recipe)"
# The cells of notebook 03 that write out train_model's loop; tests/test_training_loop.py runs them.
LOOP_TAG = "visible-loop"


def network_cells(model: str) -> list:
    """Section 1: notebook 03 shows the source of its network, 04 and 05 print theirs."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    if model != "simple_cnn":
        return [
            md("## 1. The network"),
            code(
                "from muffin_lib.training import models\n\n"
                f'config = notebook.train_config(params, "{model}")\n'
                "print(models.build_model(config.model, in_channels=config.in_channels, image_size=config.image_size))\n"
                "notebook.display_markdown(models.describe(config.model, config.in_channels, config.image_size))"
            ),
        ]
    return [
        md(
            "## 1. The network\n\nThe library's definition, as it is: a PyTorch module is its layers (`__init__`) and the way\n"
            "an input flows through them (`forward`). Each stage halves the image, so the classifier's first layer\n"
            "takes 64 feature maps of a 1/8 side each."
        ),
        code(
            "import inspect\n\n"
            "from muffin_lib.training import models\n\n"
            f'config = notebook.train_config(params, "{model}")\n'
            "notebook.display_markdown(f\"```python\\n{inspect.getsource(models.SimpleCNN)}```\")\n"
            "notebook.display_markdown(models.describe(config.model, config.in_channels, config.image_size))"
        ),
    ]


def loop_cells() -> list:
    """Notebook 03, section 2: the loop inside ``train_model``, written out with the library's parts."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    tagged = {"tags": [LOOP_TAG]}
    return [
        md(
            "## 2. The training loop, written out\n\nWhat `train_model` does, in plain sight, with the library's parts. First the data: the cached\n"
            "images (decoded once, uint8) and the saved twin-grouped split into a fit part and a validation part.\n"
            "The normalisation statistics come from the fit images only."
        ),
        code(
            "import torch\n\n"
            "from muffin_lib.data import cache, splits\n"
            "from muffin_lib.training import augment, engine, models, runtime, train\n\n"
            "data = cache.load_images(params.data_dir, params.work_dir, \"train\", config.image_size, config.color_mode)\n"
            "plan = splits.plan_for_cache(data, params.work_dir, val_fraction=params.val_fraction, seed=train.SPLIT_SEED)\n"
            "x, y = data.images[plan.train_idx], data.labels[plan.train_idx]  # the fit part: uint8 N x C x S x S, labels 0..K-1 (data.class_names)\n"
            "x_val, y_val = data.images[plan.val_idx], data.labels[plan.val_idx]  # the validation part, never trained on\n"
            "normalization = engine.compute_normalization(x)  # per-channel mean and std of the fit images\n"
            "print(f\"{len(y)} fit and {len(y_val)} validation images of {tuple(x.shape[1:])}; {normalization}\")",
            metadata=tagged,
        ),
        md(
            "Then the parts: the recipe for `loop_epochs` epochs, the network with seeded initial weights, the optimizer\n"
            "and the learning-rate schedule `engine.fit` builds (`engine.make_optimizer`, `engine.make_schedule`), the loss,\n"
            "and two seeded random generators: one for the batch order, one for the augmentation."
        ),
        code(
            "short = config.replace(epochs=params.loop_epochs)  # the recipe, for loop_epochs epochs\n"
            "device = runtime.resolve_device(params.device)\n"
            "amp = runtime.resolve_amp(short.amp, device)  # bf16 or fp16 autocast where it pays, else None: float32\n"
            "runtime.seed_everything(short.seed)  # the initial weights come from the seeded generator\n"
            "classes = len(data.class_names)  # one output per class folder: chihuahua, muffin\n"
            "model = models.build_model(short.model, in_channels=short.in_channels, image_size=short.image_size, num_classes=classes)\n"
            "model = model.to(device, memory_format=runtime.memory_format_for(device, short.channels_last))  # channels-last: fast convolutions (NCHW on Apple MPS: runtime says why)\n"
            "normalize = engine.Normalizer(normalization, device, runtime.channels_last_for(device, short.channels_last))  # uint8 -> (x / 255 - mean) / std\n"
            "optimizer = engine.make_optimizer(model, short, device)  # AdamW, no weight decay on biases and BatchNorm\n"
            "schedule = engine.make_schedule(optimizer, short, short.epochs * engine.steps_per_epoch(len(y), short.batch_size))\n"
            "criterion = torch.nn.CrossEntropyLoss(label_smoothing=short.label_smoothing)\n"
            "scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)  # fp16 only (a T4): else a no-op\n"
            "order = torch.Generator().manual_seed(short.seed)  # which images go in which batch, epoch after epoch\n"
            "draws = torch.Generator(device).manual_seed(short.seed + 1)  # the random flips, turns and crops\n"
            "history = []",
            metadata=tagged,
        ),
        md(
            "The loop: every epoch visits the fit images once in a new random order; each batch is normalised and\n"
            "augmented on the device (`augment.augment_batch`: a flip, a small turn and a crop per image), the loss\n"
            "of its predictions is differentiated (`backward`), and the optimizer moves every weight a step down the\n"
            "gradient at the schedule's learning rate. After each epoch the validation images are scored, unaugmented\n"
            "(`engine.evaluate`)."
        ),
        code(
            "for epoch in range(1, short.epochs + 1):\n"
            "    model.train()\n"
            "    total = seen = 0\n"
            "    for idx in engine.epoch_batches(len(y), short.batch_size, order):  # a new random order every epoch\n"
            "        batch = augment.augment_batch(normalize(x[idx].to(device)), generator=draws, **augment.AUGMENT_PRESETS[short.augment])\n"
            "        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):\n"
            "            loss = criterion(model(batch).float(), y[idx].to(device))\n"
            "        optimizer.zero_grad()\n"
            "        scaler.scale(loss).backward()  # the gradients: loss.backward(), the loss scaled in fp16 only\n"
            "        scaler.step(optimizer)  # one AdamW step on every weight\n"
            "        scaler.update()\n"
            "        schedule.step()  # the next learning rate of the one cycle\n"
            "        total, seen = total + loss.item() * len(idx), seen + len(idx)\n"
            "    val = engine.evaluate(model, x_val, y_val, normalization, device=device, batch_size=2 * short.batch_size)\n"
            "    history.append({\"epoch\": epoch, \"train_loss\": total / seen, \"val_loss\": val[\"loss\"], \"val_zero_one_loss\": val[\"zero_one_loss\"]})",
            metadata=tagged,
        ),
        code(
            "import pandas as pd\n\n"
            "pd.DataFrame(history).set_index(\"epoch\").round(4)"
        ),
        md(
            "## 3. Training the recipe\n\n`train.train_model` runs exactly this loop (`engine.fit`; `tests/test_training_loop.py` runs the\n"
            "three cells above and checks that they give its history), for all `epochs` of the recipe. Besides, it saves\n"
            "the checkpoint the later notebooks load, reuses it when `work_dir` already holds one of this exact\n"
            "configuration on these data, made by the same code at the same precision, and fits the temperature that\n"
            "calibrates the predicted probabilities (notebook 09). The parameters' defaults are the library's recipe\n"
            "(`engine.TrainConfig`): 128 px colour, 15 epochs of AdamW with a one-cycle schedule peaking at 3e-3,\n"
            "random-resized-crop, flip and rotation, label smoothing 0.1."
        ),
    ]


def cells(name: str, model: str, title: str, intro: str) -> list:
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    number = name[:2]
    writes_loop = model == "simple_cnn"
    install = code(colab_install_source(), metadata={"tags": ["colab-install"]})
    source = PARAMETERS.format(model=model, d=TrainConfig()) + (LOOP_PARAMETER if writes_loop else "")
    parameters = code(source, metadata={"tags": ["parameters"], "nbmake": {"mock": NBMAKE_MOCK}})
    training = loop_cells() if writes_loop else [
        md(
            "## 2. Training\n\nThe parameters' defaults are the library's recipe (`engine.TrainConfig`): 128 px colour, 15 epochs of\n"
            "AdamW with a one-cycle schedule peaking at 3e-3, random-resized-crop, flip and rotation, label smoothing\n"
            "0.1. `train_model` loads the image cache and the saved twin-grouped split (both made on demand),\n"
            "augments each batch on the device, and validates after every epoch; notebook 03 writes out the loop inside it.\n"
            "When `work_dir` already holds a checkpoint of this exact configuration on these data, made by\n"
            "the same code at the same precision, it is loaded instead."
        ),
    ]
    sections = ["3. Learning curves", "4. Validation errors", "5. What it gets wrong", "6. What the network looks at",
                "7. Results"]
    if writes_loop:  # section 3 is "Training the recipe"
        sections = [f"{int(s[0]) + 1}{s[1:]}" for s in sections]
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
            f"         val_fraction=val_fraction, n_misclassified=n_misclassified{', loop_epochs=loop_epochs' if writes_loop else ''}),\n"
            ")\n"
            "synthetic = notebook.require_data(params.data_dir)\n"
            "params"
        ),
        *network_cells(model),
        *training,
        code(
            "from muffin_lib.study import report\n"
            "from muffin_lib.training import train\n\n"
            "run = train.train_model(\n"
            "    params.data_dir, params.work_dir, config, val_fraction=params.val_fraction, device=params.device,\n"
            "    checkpoint_path=notebook.checkpoint_path(params.work_dir, config.model),\n"
            ")\n"
            "done = \"reused (same configuration, data, code and precision)\" if run.resumed else f\"saved after training on {run.device}\"\n"
            "notebook.display_markdown(f\"{len(run.history)} epoch(s); checkpoint `{run.checkpoint_path}` {done}.\")"
        ),
        md(
            f"## {sections[0]}\n\nCross-entropy and zero-one loss per epoch on the (augmented) training batches and on the validation\n"
            "images. A validation curve that turns up while the training curve keeps falling is overfitting."
        ),
        code(
            "import pandas as pd\n\n"
            "from muffin_lib.study import plots\n\n"
            "figure = plots.learning_curves(run.history, title=f\"{config.model}: learning curves\")\n"
            "notebook.show_figure(figure, params, \"learning_curves\")\n"
            "curves = pd.DataFrame(run.history).set_index(\"epoch\")[[\"train_loss\", \"train_accuracy\", \"val_loss\", \"val_zero_one_loss\", \"lr\"]]\n"
            "last, train_error = curves.iloc[-1], 1 - curves.train_accuracy.iloc[-1]\n"
            "curve_finding = (\n"
            "    f\"{config.model}: validation zero-one loss {last.val_zero_one_loss:.3f} after {len(curves)} epoch(s) (lowest \"\n"
            "    f\"{curves.val_zero_one_loss.min():.3f}, at epoch {curves.val_zero_one_loss.idxmin()}), against {train_error:.3f} on the \"\n"
            "    f\"augmented training batches of the last epoch (difference {last.val_zero_one_loss - train_error:+.3f}).\"\n"
            ")\n"
            "notebook.display_markdown(curve_finding)\n"
            "curves.round(4)"
        ),
        md(
            f"## {sections[1]}\n\nZero-one loss on the validation images with its 95% Wilson interval (they are a sample; the\n"
            "interval says how much the number could move on another sample of the same size), the confusion matrix\n"
            "and precision/recall per class. The test split is scored once, for every model together, in notebook 09."
        ),
        code(
            "validation = report.validation_summary(run.val_predictions)\n"
            "class_names = validation[\"class_names\"]  # the data's class folders: chihuahua, muffin\n"
            "figure = plots.confusion_matrix(validation[\"confusion\"], class_names=class_names,\n"
            "                                title=f\"{config.model}: validation confusion matrix\")\n"
            "notebook.show_figure(figure, params, \"confusion_matrix\")\n"
            "validation_finding = (\n"
            "    f\"{config.model}: validation zero-one loss {notebook.format_ci(validation['zero_one_loss'], validation['ci_low'], validation['ci_high'])} \"\n"
            "    f\"({validation['errors']} errors in {validation['n']} validation images, 95% Wilson interval; no twin of a validation \"\n"
            "    f\"image was trained on): {report.confusion_finding(validation['confusion'], class_names)}.\"\n"
            ")\n"
            "notebook.display_markdown(validation_finding)\n"
            "report.per_class_frame(validation[\"per_class\"])"
        ),
        md(
            f"## {sections[2]}\n\nThe validation photos the model misclassified with the highest confidence, titled *true → predicted\n"
            "(probability of the predicted class)*."
        ),
        code(
            "wrong = report.most_confident_errors(run.val_predictions, params.n_misclassified)\n"
            "figure = plots.errors_grid(params.data_dir, wrong, class_names=class_names,\n"
            "                           title=f\"{config.model}: the most confident validation errors\")\n"
            "notebook.show_figure(figure, params, \"misclassified\")"
        ),
        md(
            f"## {sections[3]}\n\nGrad-CAM (Captum's `LayerGradCam` on the last feature map) for the most confident\n"
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
        md(f"## {sections[4]}\n\nSaved to `work_dir/results/` for the series summary and notebook 09."),
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
