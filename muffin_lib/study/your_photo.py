"""Try your own photo: the chosen model's answer, its calibrated probability and where it looked."""

from __future__ import annotations

from pathlib import Path

from muffin_lib.config import WorkDir
from muffin_lib.data.splits import twin_free_test_images
from muffin_lib.errors import MuffinError
from muffin_lib.training.predict import predict_paths

SHOWN_WIDTH = 512  # px on screen for "input | Grad-CAM" (the model's input is only image_size px wide)


def predict_photo(checkpoint, photo, work_dir) -> dict:
    """The ``predict_paths`` entry for ``photo`` (label, calibrated probability, explanation, ...)."""
    if not Path(photo).is_file():
        raise MuffinError(f"photo {photo} does not exist; give the path of a JPEG or PNG file")
    result = predict_paths(checkpoint, [photo], explain_dir=WorkDir(work_dir).figures_dir / "your_photo")
    entry = result["predictions"][0]
    if entry["error"] is not None:
        raise MuffinError(f"{photo}: {entry['error']}")
    return entry


def show_prediction(checkpoint, photo, work_dir) -> dict:
    """Show the answer for ``photo`` and its Grad-CAM (model input | overlay); returns the entry."""
    from IPython.display import Image, Markdown, display

    entry = predict_photo(checkpoint, photo, work_dir)
    others = ", ".join(f"{name} {p:.2f}" for name, p in entry["probabilities"].items())
    display(Markdown(f"**{entry['label']}**, probability {entry['probability']:.2f} (calibrated; {others}) "
                     f"for `{Path(photo).name}`. Left: what the model sees; right: where it looked "
                     "(Grad-CAM)."))
    display(Image(filename=entry["explanation"], width=SHOWN_WIDTH))
    return entry


def _uploaded_files(value) -> list[tuple[str, bytes]]:
    """(name, bytes) of a FileUpload value: a tuple of dicts in ipywidgets 8, a dict by name in 7."""
    if isinstance(value, dict):
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]


def save_upload(name: str, content: bytes, work_dir) -> Path:
    """Keep an uploaded photo under ``work_dir/uploads`` (only its file name is used)."""
    path = WorkDir(work_dir).root / "uploads" / (Path(name).name or "photo")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def upload_widget(checkpoint, work_dir):
    """A FileUpload button; each photo uploaded is classified and explained below it."""
    import ipywidgets as widgets

    upload = widgets.FileUpload(accept="image/*", multiple=False, description="Your photo")
    output = widgets.Output()

    def on_upload(change) -> None:
        with output:
            output.clear_output()
            for name, content in _uploaded_files(change["new"]):
                try:
                    show_prediction(checkpoint, save_upload(name, content, work_dir), work_dir)
                except MuffinError as error:
                    print(f"error: {error}")

    upload.observe(on_upload, names="value")
    return widgets.VBox([upload, output])


def example_photo(data_dir, work_dir) -> Path:
    """A twin-free test photo to show when no photo is given."""
    relpaths, free = twin_free_test_images(data_dir, work_dir)
    kept = [path for path, keep in zip(relpaths, free, strict=True) if keep]
    if not kept:
        raise MuffinError(f"no test photos under {data_dir}/test; run 00_setup.ipynb first")
    return Path(data_dir) / kept[0]
