"""How the near-duplicate rule of ``muffin_lib.data.twins`` was chosen: counts per rule on a dataset, and the
recall of each rule on made-up twins (re-encoded, resized, trimmed copies) of its photos.

    python benchmarks/twins.py --data-dir ../shared/data/muffin-chihuahua-dev [--variants 200]

Prints one table of rules: pairs found, test images with a twin in train, training images with a twin in
train, pairs whose labels differ (a proxy for false pairs: a photo cannot be both), and the recall on the
made-up twins. Pairs at the edge of a threshold are best judged by eye: ``--gallery OUT.png`` draws the
pairs with phash distance 7-12 that only one of the signals accepts.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from muffin_lib.data import twins  # noqa: E402
from muffin_lib.data.imageio import load_image  # noqa: E402
from muffin_lib.data.scan import scan_dataset  # noqa: E402
from muffin_lib.data.synthetic import twin_variant  # noqa: E402


def _features(signatures):
    hashes = np.stack([np.frombuffer(sig[0], dtype=np.uint8) for sig in signatures])
    thumbnails = np.stack([np.frombuffer(sig[1], dtype=np.uint8) for sig in signatures])
    return twins.features(hashes, thumbnails)


RULES = {
    "thumbnail corr >= 0.95": lambda d, c: c >= 0.95,
    "phash <= 6": lambda d, c: d <= 6,
    "phash <= 8": lambda d, c: d <= 8,
    "phash <= 10": lambda d, c: d <= 10,
    "phash <= 12": lambda d, c: d <= 12,
    "muffin_lib rule": twins.is_twin,
}


def _variants(image: Image.Image, rng) -> dict[str, Image.Image]:
    w, h = image.size

    def jpeg(im, quality):
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    trimmed = image.crop((int(0.03 * w), int(0.03 * h), w, h))
    side_w, side_h = int(0.05 * w), int(0.05 * h)
    return {
        "re-encoded (JPEG q=50)": jpeg(image, 50),
        "half size": image.resize((max(8, w // 2), max(8, h // 2))),
        "trimmed 3% + resized 0.75": trimmed.resize((w * 3 // 4, h * 3 // 4)),
        "synthetic.twin_variant": twin_variant(image, rng),
        "cropped 10% (5% a side)": image.crop((side_w, side_h, w - side_w, h - side_h)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--variants", type=int, default=200, help="photos to make twins of, for recall")
    parser.add_argument("--gallery", type=Path, default=None, help="write the edge pairs to this PNG")
    args = parser.parse_args(argv)

    records = scan_dataset(args.data_dir, progress=False).records
    signatures = [twins.image_signature(str(r.path)) for r in records]
    hashes, ones, unit = _features(signatures)
    distance = ones[:, None] + ones[None, :] - 2.0 * (hashes @ hashes.T)
    correlation = unit @ unit.T
    upper = np.triu(np.ones(distance.shape, dtype=bool), 1)
    split = np.array([r.split for r in records])
    labels = np.array([r.label for r in records])

    rng = np.random.default_rng(0)
    chosen = rng.choice(len(records), size=min(args.variants, len(records)), replace=False)
    made = {}
    for index in chosen:
        original = load_image(records[index].path).convert("RGB")
        base = twins.image_signature_of(original)
        for name, variant in _variants(original, rng).items():
            made.setdefault(name, []).append((base, twins.image_signature_of(variant)))

    print(f"{len(records)} images in {args.data_dir}; recall on twins made from {len(chosen)} of them\n")
    header = (f"{'rule':<26}{'pairs':>7}{'test w/ train twin':>20}{'train w/ train twin':>21}"
              f"{'label conflicts':>17}")
    print(header + "".join(f"  {name}" for name in made))
    for rule_name, rule in RULES.items():
        rows, cols = np.nonzero(rule(distance, correlation) & upper)
        found = list(zip(rows, cols, strict=True))
        cross = {i if split[i] == "test" else j for i, j in found if split[i] != split[j]}
        inside = {k for i, j in found if split[i] == split[j] == "train" for k in (i, j)}
        conflicts = int((labels[rows] != labels[cols]).sum())
        recalls = []
        for pairs in made.values():
            a_h, a_o, a_u = _features([p[0] for p in pairs])
            b_h, b_o, b_u = _features([p[1] for p in pairs])
            d = a_o + b_o - 2.0 * (a_h * b_h).sum(axis=1)
            c = (a_u * b_u).sum(axis=1)
            recalls.append(float(np.mean(rule(d, c))))
        print(f"{rule_name:<26}{len(rows):>7}{len(cross):>20}{len(inside):>21}{conflicts:>17}"
              + "".join(f"  {r:>{len(n)}.0%}" for r, n in zip(recalls, made, strict=True)))

    if args.gallery:
        from muffin_lib.study import plots

        edge = np.nonzero(upper & (distance >= 7) & (distance <= 12) & (correlation >= 0.5))
        pairs = sorted(zip(*edge, strict=True), key=lambda p: -correlation[p])[:32]
        titled = [(records[i].relpath, records[j].relpath) for i, j in pairs]
        figure = plots.twin_gallery(args.data_dir, titled, title="pairs at the edge: phash 7-12")
        for k, ax in enumerate(figure.axes[: 2 * len(pairs)]):
            if k % 2 == 0:
                i, j = pairs[k // 2]
                ax.set_title(f"d={distance[i, j]:.0f} r={correlation[i, j]:.2f}", fontsize=8)
        figure.savefig(args.gallery, dpi=80)
        print(f"\nedge pairs drawn to {args.gallery}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
