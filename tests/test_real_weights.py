"""Releases of the real packaged encoders (../shared/MODELS.md) reproduce the original embeddings."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from configuration_mtpf import MtpfConfig
from mtpf.release import init_release
from tests.conftest import REPO_ROOT, real_encoder_dir
from tests.test_release import example_texts, run_user_process


def mean_pooled(model, batch) -> torch.Tensor:
    """Mean pooling then L2 normalisation: the default sentence embedding (no sentence-transformers files)."""
    tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1), dim=-1)


@pytest.mark.parametrize(("name", "tpl_layers"), [("minilm-l6", 2), ("splade-tiny", 1)])
def test_release_of_real_encoder_equals_original(name, tpl_layers, tmp_path):
    source = real_encoder_dir(name)
    release = init_release(str(source), tmp_path / "rel", tpl_layers=tpl_layers)
    original = AutoModel.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    batch = tokenizer(example_texts(), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = mean_pooled(original, batch)

    run_user_process(
        [str(REPO_ROOT / "examples" / "load_release.py"), str(release), "--output", "emb.safetensors"], tmp_path
    )
    got = load_file(str(tmp_path / "emb.safetensors"))
    torch.testing.assert_close(got["base"], expected, atol=1e-5, rtol=0)
    # A release made by init has identity slots (LoRA B = 0): every slot reproduces the original too.
    torch.testing.assert_close(got["ner.sentence"], expected, atol=1e-5, rtol=0)


def test_minilm_release_matches_sentence_transformers(tmp_path):
    """all-MiniLM-L6-v2's own definition (mean -> Normalize, 256 sub-tokens) is read at init and kept: mtpf's
    `encode` and SentenceTransformer on the release equal SentenceTransformer on the original, long texts included."""
    from sentence_transformers import SentenceTransformer

    source = real_encoder_dir("minilm-l6")
    release = init_release(str(source), tmp_path / "rel")
    config = MtpfConfig.from_pretrained(release / "backbone")
    assert (config.pooling, config.normalize, config.max_seq_length) == ("mean", True, 256)
    texts = [*example_texts(), " ".join(["a long review of a film that goes on"] * 60)]  # over 256 sub-tokens
    reference = SentenceTransformer(str(source), device="cpu").encode(texts, convert_to_tensor=True)
    model = AutoModel.from_pretrained(release / "backbone")
    tokenizer = AutoTokenizer.from_pretrained(release / "backbone")
    torch.testing.assert_close(model.encode(texts, tokenizer), reference, atol=1e-5, rtol=0)
    from_release = SentenceTransformer(str(release / "backbone"), device="cpu", trust_remote_code=True)
    torch.testing.assert_close(from_release.encode(texts, convert_to_tensor=True), reference, atol=1e-5, rtol=0)


def test_encoder_without_sentence_transformers_files_gets_the_defaults(tmp_path):
    release = init_release(str(real_encoder_dir("splade-tiny")), tmp_path / "rel", tpl_layers=1)
    config = MtpfConfig.from_pretrained(release / "backbone")
    assert (config.pooling, config.normalize, config.max_seq_length) == ("mean", True, 512)
