"""Fixtures shared by the evaluation tests: a tiny release with trained-looking (random) slots."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtpf.release import export_release, load_encoder, mtpf_model_from_encoder
from mtpf.slots import attach_slots
from tests.conftest import randomize_lora

TINY = "offline:tiny-bert"  # 2 layers, hidden 32, MiniLM's real (fast) tokenizer


@pytest.fixture(scope="session")
def slotted_release(tmp_path_factory) -> Path:
    """A release of the tiny encoder whose slots (r=8, alpha=32, last layer) hold random non-zero weights."""
    encoder, tokenizer = load_encoder(TINY)
    model = mtpf_model_from_encoder(encoder, tpl_layers=1, r=8, lora_alpha=32)
    peft_model = attach_slots(model)
    randomize_lora(peft_model, seed=3)
    return export_release(peft_model, tokenizer, tmp_path_factory.mktemp("eval") / "release")
