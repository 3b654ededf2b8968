"""bench end to end on a tiny synthetic set with tiny settings."""

from __future__ import annotations

import json

from muffin_lib import cli
from muffin_lib.training import bench


def test_bench_cli_prints_the_json_line(capsys):
    argv = ["bench", "--model", "simple_cnn", "--image-size", "32", "--n-images", "12", "--batch-size", "8",
            "--device", "cpu", "--seconds", "0.2", "--rounds", "3"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("SYNTHETIC" in line for line in lines)
    result = json.loads(lines[-1])
    for key in ("baseline_img_per_s", "muffin_img_per_s", "speedup", "device", "model", "image_size",
                "gflops"):
        assert key in result
    assert result["device"] == "cpu" and result["synthetic"] and result["n_images"] == 12
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]  # alternating rounds of both pipelines
    speedups = sorted(r["speedup"] for r in rounds)
    assert result["speedup"] == speedups[1]  # the median
    assert result["speedup_min"] == speedups[0] and result["speedup_max"] == speedups[2]
    assert result["muffin_img_per_s"] == sorted(r["muffin_img_per_s"] for r in rounds)[1]
    assert result["baseline_img_per_s"] > 0 and result["muffin_img_per_s"] > 0


def test_flop_count_of_simple_cnn():
    # forward: 3 convs + 2 linear layers at 32 px; backward roughly twice that
    forward = 2 * (32 * 32 * 16 * 9 + 16 * 16 * 32 * 16 * 9 + 8 * 8 * 64 * 32 * 9 + 4 * 4 * 64 * 512
                   + 512 * 2)
    flops = bench.training_flops_per_image("simple_cnn", 1, 32)
    assert 2.5 * forward < flops < 3.1 * forward


def test_bench_amp_auto_times_bf16_against_fp32_in_the_same_rounds(capsys, monkeypatch):
    # A CPU with AMX whose probe finds bf16 faster (patched): auto picks bf16 and every round also times fp32.
    from muffin_lib.training import bf16_probe, runtime

    monkeypatch.delenv("MUFFIN_CPU_BF16", raising=False)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
    verdict = bf16_probe.Bf16Verdict(True, "bf16: probe 1.90x bf16 vs fp32, parity ok", 1.9, 0.0, 0.05)
    monkeypatch.setattr(bf16_probe, "measure", lambda *args: verdict)
    argv = ["bench", "--model", "simple_cnn", "--image-size", "32", "--n-images", "12", "--batch-size", "8",
            "--device", "cpu", "--seconds", "0.2", "--rounds", "3", "--amp", "auto"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["precision"] == "bf16" and result["amp"] == "bf16" and result["amp_requested"] == "auto"
    ratios = sorted(r["amp_speedup"] for r in result["rounds"])
    assert result["amp_speedup"] == ratios[1] and result["amp_speedup_min"] == ratios[0]
    assert all(r["amp_speedup"] == r["muffin_img_per_s"] / r["fp32_img_per_s"] for r in result["rounds"])
    assert "bf16 over fp32 (ours, same rounds)" in out
    assert result["precision_reason"] == "bf16: probe 1.90x bf16 vs fp32, parity ok; amx_bf16, avx512_bf16"


def test_bench_amp_off_times_fp32_only(capsys, monkeypatch):
    argv = ["bench", "--model", "simple_cnn", "--image-size", "32", "--n-images", "12", "--batch-size", "8",
            "--device", "cpu", "--seconds", "0.2", "--rounds", "1", "--amp", "off"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["precision"] == "fp32" and "amp_speedup" not in result
    assert "fp32_img_per_s" not in result["rounds"][0]
