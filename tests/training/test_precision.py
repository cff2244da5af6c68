"""bf16 on CPU: autocast only where the CPU has native bf16; elsewhere fp32 with a warning that says why."""

from __future__ import annotations

import logging

import pytest
import torch

from mtpf.training import precision
from mtpf.training.args import parse_args
from mtpf.training.downstream import AdapterProtocol, Phase, training_arguments

PHASE = Phase(joint=True, epochs=1, learning_rate=1e-3)

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")


def test_native_bf16_cpu_turns_autocast_on(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "cpu_bf16_capability", lambda: {"avx512_bf16": True, "amx": False, "native": True})
    _, _, args = parse_args(["configs/demo.yaml", "--bf16", "true", "--output_dir", str(tmp_path)])
    assert args.bf16 and args.use_cpu
    arguments = training_arguments(str(tmp_path), AdapterProtocol(bf16=True), PHASE, seed=0, evaluate=False)
    assert arguments.bf16 and arguments.use_cpu


def test_emulated_bf16_falls_back_to_fp32_with_the_measured_slowdown(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_capability", lambda: {"avx512_bf16": False, "amx": False, "native": False})
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: 0.17)
    with caplog.at_level(logging.WARNING):
        _, _, args = parse_args(["configs/demo.yaml", "--bf16", "true", "--output_dir", str(tmp_path)])
    assert not args.bf16
    assert "no native bf16" in caplog.text and "0.17x" in caplog.text
    assert not training_arguments(str(tmp_path), AdapterProtocol(bf16=True), PHASE, seed=0, evaluate=False).bf16


def test_capability_is_reported_and_the_speedup_is_measured():
    capability = precision.cpu_bf16_capability()
    assert set(capability) == {"avx512_bf16", "amx", "native"}
    assert precision.bf16_matmul_speedup(size=64, repeats=1) > 0
