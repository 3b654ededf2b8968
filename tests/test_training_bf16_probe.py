"""amp="auto" on a CPU: bf16 only with native bf16 instructions and a probe that finds it faster and right."""

from __future__ import annotations

import pytest
import torch

from muffin_lib.training import bf16_probe, recipe, runtime

ZEN3 = frozenset({"avx2", "fma"})
ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16"})
XEON_AMX = frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})
CONFIG = recipe.TrainConfig(model="deeper_cnn", image_size=128)
REAL_MEASURE = bf16_probe.measure


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU with patched flags and a fresh probe cache; ``probes`` counts real measurements."""
    monkeypatch.delenv("MUFFIN_CPU_BF16", raising=False)
    monkeypatch.setenv("MUFFIN_CACHE_DIR", str(tmp_path))
    probes = []

    def use(flags, verdict=None):
        monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)

        def measure(*args, **kwargs):
            probes.append(args)
            return verdict
        monkeypatch.setattr(bf16_probe, "measure", measure)
        return probes
    return use


def test_a_cpu_without_bf16_instructions_never_probes_and_stays_fp32(cpu):
    probes = cpu(ZEN3)
    assert runtime.resolve_amp("auto", torch.device("cpu"), CONFIG) is None
    assert runtime.execution_key("auto", "cpu", CONFIG) == "cpu/fp32"
    assert "no native bf16" in runtime.precision_reason("auto", "cpu", CONFIG)
    assert probes == []
    # Explicit requests are obeyed whatever the hardware.
    assert runtime.resolve_amp("bf16", torch.device("cpu"), CONFIG) == torch.bfloat16
    assert runtime.resolve_amp("off", torch.device("cpu"), CONFIG) is None


@pytest.mark.parametrize("flags", [ZEN4, XEON_AMX])
def test_bf16_where_the_probe_finds_it_faster_and_right(cpu, flags):
    verdict = bf16_probe.Bf16Verdict(True, "bf16: probe 1.90x bf16 vs fp32, parity ok", 1.9, 0.0, 0.05)
    probes = cpu(flags, verdict)
    assert runtime.execution_key("auto", "cpu", CONFIG) == "cpu/bf16"
    reason = runtime.precision_reason("auto", "cpu", CONFIG)
    assert reason.startswith("bf16: probe 1.90x") and ("avx512_bf16" in reason)
    # Cached per machine and workload: the second question measures nothing, another model measures once.
    assert runtime.resolve_amp("auto", torch.device("cpu"), CONFIG) == torch.bfloat16
    assert len(probes) == 1
    runtime.resolve_amp("auto", torch.device("cpu"), CONFIG.replace(model="simple_cnn"))
    assert [p[0] for p in probes] == ["deeper_cnn", "simple_cnn"]


def test_fp32_where_the_probe_finds_bf16_slower(cpu):
    cpu(ZEN4, bf16_probe.Bf16Verdict(False, "fp32: probe 1.02x bf16 vs fp32 (needs 1.15x)", 1.02, 0.0, 0.05))
    assert runtime.execution_key("auto", "cpu", CONFIG) == "cpu/fp32"
    assert "1.02x" in runtime.precision_reason("auto", "cpu", CONFIG)


def test_a_mismatch_keeps_fp32_and_says_why(cpu, monkeypatch):
    cpu(ZEN4)
    monkeypatch.setattr(bf16_probe, "measure", REAL_MEASURE)
    real = bf16_probe._loss_and_grad

    def wrong_bf16(model, x, y, bf16):  # a broken bf16 kernel: gradients off by their own size
        loss, grad = real(model, x, y, bf16)
        noisy = grad + grad.norm() * torch.randn_like(grad) / grad.numel() ** 0.5
        return (loss, noisy) if bf16 else (loss, grad)
    monkeypatch.setattr(bf16_probe, "_loss_and_grad", wrong_bf16)
    small = CONFIG.replace(model="simple_cnn", image_size=32)
    assert runtime.resolve_amp("auto", torch.device("cpu"), small) is None
    assert "disagrees with fp32" in runtime.precision_reason("auto", "cpu", small)


def test_the_override_wins_both_ways(cpu, monkeypatch):
    probes = cpu(ZEN3)
    monkeypatch.setenv("MUFFIN_CPU_BF16", "1")
    assert runtime.execution_key("auto", "cpu", CONFIG) == "cpu/bf16"
    cpu(XEON_AMX)
    monkeypatch.setenv("MUFFIN_CPU_BF16", "0")
    assert runtime.execution_key("auto", "cpu", CONFIG) == "cpu/fp32"
    assert runtime.precision_reason("auto", "cpu", CONFIG) == "fp32: MUFFIN_CPU_BF16=0"
    assert probes == []


def test_the_real_probe_measures_agreement_and_speed():
    verdict = bf16_probe.measure("simple_cnn", 3, 32)
    assert verdict.loss_error < bf16_probe.LOSS_TOLERANCE and verdict.grad_error < bf16_probe.GRAD_TOLERANCE
    assert verdict.speedup > 0 and verdict.reason.startswith("bf16" if verdict.use else "fp32")


def test_a_pretrained_network_is_probed_from_its_pretrained_weights(cpu, monkeypatch):
    verdict = bf16_probe.Bf16Verdict(True, "bf16: probe 1.50x bf16 vs fp32, parity ok", 1.5, 0.0, 0.05)
    probes = cpu(XEON_AMX, verdict)
    runtime.resolve_amp("auto", torch.device("cpu"), recipe.FINE_TUNE)
    runtime.resolve_amp("auto", torch.device("cpu"), recipe.FINE_TUNE.replace(pretrained=False))
    assert [p[-1] for p in probes] == [True, False]  # two workloads, two verdicts
    # A linear probe trains only a linear head on features: fp32, nothing to probe.
    assert runtime.resolve_amp("auto", torch.device("cpu"), recipe.LINEAR_PROBE) is None and len(probes) == 2
    built = []
    monkeypatch.setattr(bf16_probe, "build_model", lambda *a, **k: built.append(k["pretrained"]) or
                        torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1),
                                            torch.nn.Flatten()))
    REAL_MEASURE("transfer", 3, 32, pretrained=True)
    assert built == [True]
