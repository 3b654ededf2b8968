"""Issue 16's recipe candidates: a moving average of the weights (TrainConfig.ema_decay) and MixUp / CutMix
(TrainConfig.mix), and the keys that must not move for them."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from muffin_lib.errors import MuffinError
from muffin_lib.training import engine, runtime, train
from muffin_lib.training.engine import TRANSFER_RECIPE, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
CPU = torch.device("cpu")


def _bright_vs_dark(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An easy task: label 1 images are brighter. uint8 N x 1 x 32 x 32."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    noise = torch.randint(0, 120, (n, 1, SIZE, SIZE), generator=g)
    return (noise + 100 * labels.view(-1, 1, 1, 1)).clamp(0, 255).to(torch.uint8), labels


def _config(**changes) -> TrainConfig:
    base = {"model": "simple_cnn", "image_size": SIZE, "color_mode": "grayscale", "epochs": 2, "batch_size": 16,
            "lr": 1e-3, "augment": "flip_rotate", "label_smoothing": 0.1}
    return TrainConfig(**{**base, **changes})


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ----------------------------------------------------------------------------- keys and config


def test_keys_of_existing_configs_do_not_move():
    # Pinned before ema_decay / mix / mix_alpha existed: trial stores and checkpoints on disk are found by them.
    assert TrainConfig().key() == "8de977572b32"
    assert TRANSFER_RECIPE.key() == "6a8b2ecd09d6"
    assert TrainConfig(model="deeper_cnn", epochs=30, seed=2).key() == "099788c94454"
    assert _config(label_smoothing=0.0).key() == "599724095518"  # test_training_engine's _config()
    assert TrainConfig(ema_decay=None, mix="none", mix_alpha=1.0).key() == TrainConfig().key()  # explicit defaults


def test_the_new_fields_enter_the_key_when_set():
    base = TrainConfig()
    variants = [base.replace(ema_decay=0.99), base.replace(ema_decay=0.999), base.replace(mix="mixup"),
                base.replace(mix="cutmix"), base.replace(mix="mixup_cutmix"),
                base.replace(mix="mixup_cutmix", mix_alpha=0.4), base.replace(ema_decay=0.99, mix="mixup")]
    keys = {config.key() for config in variants}
    assert len(keys) == len(variants) and base.key() not in keys
    assert base.replace(ema_decay=0.99, channels_last=False).key() == base.replace(ema_decay=0.99).key()  # speed only
    for config in variants:
        assert TrainConfig.from_dict(config.to_dict()) == config
    # A config stored before the fields existed still loads, as the default recipe.
    old = {k: v for k, v in base.to_dict().items() if k not in ("ema_decay", "mix", "mix_alpha")}
    assert TrainConfig.from_dict(old) == base


@pytest.mark.parametrize(("changes", "match"), [
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"ema_decay": 0.0}, "ema_decay"),
    ({"ema_decay": -0.5}, "ema_decay"),
    ({"ema_decay": True}, "ema_decay"),
    ({"ema_decay": "0.99"}, "ema_decay"),
    ({"mix": "mixcut"}, "mix.*mixup_cutmix"),
    ({"mix_alpha": 0.0}, "mix_alpha"),
    ({"mix_alpha": float("nan")}, "mix_alpha"),
])
def test_bad_values_are_one_clear_error(changes, match):
    with pytest.raises(MuffinError, match=match):
        TrainConfig(**changes)


def test_train_cli_flags():
    from muffin_lib.cli import build_parser

    parser = build_parser("train")
    assert train.config_from_args(parser.parse_args(["train"])) == TrainConfig()
    args = parser.parse_args(["train", "--ema-decay", "0.995", "--mix", "mixup_cutmix", "--mix-alpha", "0.4"])
    config = train.config_from_args(args)
    assert (config.ema_decay, config.mix, config.mix_alpha) == (0.995, "mixup_cutmix", 0.4)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--mix", "mosaic"])


def test_recipe_variants_are_valid_configs():
    variants = runpy.run_path(str(ROOT / "benchmarks" / "recipe_variants.py"), run_name="not_main")["VARIANTS"]
    keys = set()
    for model, epochs, seeds, changes in variants.values():
        keys.add(TrainConfig().replace(model=model, epochs=epochs, seed=seeds[0], **changes).key())
    assert len(keys) == len(variants)
    assert any("ema_decay" in v[3] for v in variants.values()) and any("mix" in v[3] for v in variants.values())


def test_recipe_cv_candidates_are_distinct_changes_of_the_deployed_recipe():
    script = runpy.run_path(str(ROOT / "benchmarks" / "recipe_cv.py"), run_name="not_main")
    deployed = TrainConfig(model=script["MODEL"])
    trained = {name: changes for name, changes in script["CANDIDATES"].items() if name != "flip_tta"}
    keys = {deployed.replace(**changes).key() for changes in trained.values()}
    assert len(keys) == len(trained) and deployed.key() not in keys
    assert script["CANDIDATES"]["flip_tta"] == {}  # scored on the deployed trials: nothing trains


def test_recipe_cv_flip_tta_reads_the_trials_own_flip_scores_and_refuses_trials_without_them(cv_result):
    flip_tta = runpy.run_path(str(ROOT / "benchmarks" / "recipe_cv.py"), run_name="not_main")["flip_tta"]
    result = cv_result(TrainConfig(model="deeper_cnn"), [0.08, 0.06])
    result.trials = [{"metrics": {"zero_one_loss": v, "flip_tta_zero_one_loss": v - 0.01}} for v in result.losses]
    assert flip_tta(result).losses == pytest.approx([0.07, 0.05]) and result.losses == [0.08, 0.06]
    result.trials = [{"metrics": {"zero_one_loss": v}} for v in result.losses]  # stored before trials recorded it
    with pytest.raises(SystemExit, match="flip test-time augmentation"):
        flip_tta(result)


def test_recipe_cv_with_one_seed_is_the_librarys_paired_test_and_with_two_averages_each_fold(cv_result):
    from muffin_lib.selection.cv import compare_configs

    compare = runpy.run_path(str(ROOT / "benchmarks" / "recipe_cv.py"), run_name="not_main")["seed_averaged_comparison"]
    deployed, candidate = TrainConfig(model="deeper_cnn"), TrainConfig(model="deeper_cnn", epochs=30)
    base0 = cv_result(deployed, [0.08, 0.07, 0.09, 0.07, 0.06])
    cand0 = cv_result(candidate, [0.07, 0.07, 0.07, 0.06, 0.05])
    one = compare([cand0], [base0])
    library = compare_configs(candidate, deployed, cand0, base0)
    assert one["diff"] == pytest.approx(library["mean_diff"]) and one["p_value"] == pytest.approx(library["p_value"])
    assert one["cv"] == pytest.approx(cand0.summary["mean"]) and one["cv_low"] == pytest.approx(cand0.summary["ci_low"])

    # A second training seed on the same folds: each fold's loss is the mean of its two trainings, and a seed
    # that points the same way makes the fold differences steadier, so the test grows surer.
    base1 = cv_result(deployed.replace(seed=1), [0.06, 0.07, 0.05, 0.07, 0.06])
    cand1 = cv_result(candidate.replace(seed=1), [0.05, 0.06, 0.05, 0.05, 0.05])
    two = compare([cand0, cand1], [base0, base1])
    assert two["seeds"] == [0, 1] and two["per_fold_per_seed"]["1"] == cand1.losses
    assert two["per_fold"] == pytest.approx([0.06, 0.065, 0.06, 0.055, 0.05])
    assert two["deployed_per_fold"] == pytest.approx([0.07, 0.07, 0.07, 0.07, 0.06])
    assert two["diff"] == pytest.approx(-0.01) and two["p_value"] < one["p_value"]
    with pytest.raises(SystemExit, match="same folds"):
        compare([cand0], [cv_result(deployed, base0.losses, plan_key="another plan")])


# ----------------------------------------------------------------------------- moving average of the weights


def test_train_step_keeps_torchs_moving_average_of_parameters_and_buffers():
    decay = 0.6
    config = _config(model="deeper_cnn", ema_decay=decay, augment="none")  # deeper_cnn has BatchNorm
    runtime.seed_everything(0)
    model = engine.build_model("deeper_cnn", in_channels=1, image_size=SIZE)
    step = engine.TrainStep(model, config, CPU, {"mean": [0.5], "std": [0.25]}, total_steps=4)
    assert isinstance(step.ema, AveragedModel) and step.ema.module is not model
    images, labels = _bright_vs_dark(16)
    expected = None
    for _ in range(3):
        step(images, labels)
        raw = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        # W_1 = the first step's weights; W_t = decay W_(t-1) + (1 - decay) weights after step t
        expected = raw if expected is None else {k: decay * expected[k] + (1 - decay) * raw[k] for k in raw}
    averaged = step.ema.module.state_dict()
    for name, value in expected.items():
        if name.endswith("num_batches_tracked"):
            continue  # an integer counter: averaged and truncated, unused with BatchNorm's momentum
        assert torch.allclose(averaged[name].float(), value, rtol=1e-5, atol=1e-6), name
    assert not torch.equal(averaged["features.5.running_mean"], model.state_dict()["features.5.running_mean"])
    assert not _same_weights(step.ema.module, model)


def test_fit_validates_and_returns_the_moving_average():
    images, labels = _bright_vs_dark(64)
    val = (images[:16], labels[:16])
    plain = engine.fit(_config(), images, labels, *val, device="cpu", progress=False)
    averaged = engine.fit(_config(ema_decay=0.9), images, labels, *val, device="cpu", progress=False)
    # The average does not change training (same losses), only what is scored and returned.
    assert [h["train_loss"] for h in averaged.history] == [h["train_loss"] for h in plain.history]
    assert [h["val_loss"] for h in averaged.history] != [h["val_loss"] for h in plain.history]
    assert not _same_weights(averaged.model, plain.model) and not averaged.model.training
    scores = engine.evaluate(averaged.model, *val, averaged.normalization, device="cpu")
    assert scores["loss"] == pytest.approx(averaged.history[-1]["val_loss"], rel=1e-6)

    # With a decay close to 1 the average stays at the first step's weights, near the initial ones.
    near_one = engine.fit(_config(ema_decay=1 - 1e-9), images, labels, device="cpu", progress=False)
    runtime.seed_everything(0)
    initial = engine.build_model("simple_cnn", in_channels=1, image_size=SIZE)

    def distance(model):
        return sum((p.detach() - q.detach()).norm() ** 2 for p, q in
                   zip(model.parameters(), initial.parameters(), strict=True)) ** 0.5

    assert distance(near_one.model) < 0.05 * distance(plain.model)


def test_early_stopping_keeps_the_best_average():
    images, labels = _bright_vs_dark(64)
    val = (images[:16], labels[:16])
    result = engine.fit(_config(ema_decay=0.9, epochs=4, early_stopping_patience=1, lr=3e-2), images, labels, *val,
                        device="cpu", progress=False)
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_epoch == best["epoch"]
    scores = engine.evaluate(result.model, *val, result.normalization, device="cpu")
    assert scores["loss"] == pytest.approx(best["val_loss"], rel=1e-6)


# ----------------------------------------------------------------------------- MixUp / CutMix


@pytest.mark.parametrize("mix", ["mixup", "cutmix", "mixup_cutmix"])
def test_mixing_gives_soft_targets(mix):
    torch.manual_seed(0)
    transform = engine.make_mix(_config(mix=mix), num_classes=3)
    x, labels = torch.randn(8, 1, SIZE, SIZE), torch.arange(8) % 3
    mixed, targets = transform(x, labels)
    assert mixed.shape == x.shape and not torch.equal(mixed, x)
    assert targets.shape == (8, 3) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(dim=1), torch.ones(8))
    assert ((targets > 0) & (targets < 1)).any()  # mixed, not one-hot
    assert engine.make_mix(_config(), num_classes=3) is None


def test_train_step_mixes_on_a_stream_of_its_own():
    config = _config(mix="mixup_cutmix", augment="none")
    images, labels = _bright_vs_dark(16)
    runs = []
    for _ in range(2):
        runtime.seed_everything(0)
        model = engine.build_model("simple_cnn", in_channels=1, image_size=SIZE)  # no dropout: no global draws
        step = engine.TrainStep(model, config, CPU, {"mean": [0.5], "std": [0.25]}, total_steps=4)
        torch.manual_seed(123)
        before = torch.get_rng_state()
        losses = [step(images, labels)[0].item() for _ in range(3)]
        assert torch.equal(torch.get_rng_state(), before)  # the global generator is left as it was
        assert step.target_labels.shape == labels.shape and step.target_labels.dtype == torch.int64
        runs.append(losses)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("mix", ["mixup", "cutmix", "mixup_cutmix"])
def test_fit_with_mixing_is_reproducible_for_a_seed(mix):
    images, labels = _bright_vs_dark(64)
    val = (images[:16], labels[:16])
    config = _config(mix=mix, epochs=1)
    first = engine.fit(config, images, labels, *val, device="cpu", progress=False)
    torch.rand(1000)  # whatever happened to the global generator in between
    again = engine.fit(config, images, labels, *val, device="cpu", progress=False)
    assert first.history[0]["train_loss"] == again.history[0]["train_loss"]
    assert first.history[0]["val_loss"] == again.history[0]["val_loss"]
    assert _same_weights(first.model, again.model)
    assert 0.0 <= first.history[0]["train_accuracy"] <= 1.0
    plain = engine.fit(_config(epochs=1), images, labels, device="cpu", progress=False)
    other_seed = engine.fit(config.replace(seed=1), images, labels, device="cpu", progress=False)
    assert first.history[0]["train_loss"] not in (plain.history[0]["train_loss"], other_seed.history[0]["train_loss"])
