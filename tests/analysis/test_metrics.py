import math

import pytest
import torch
from transformers import AutoTokenizer

from configuration_mtpf import MtpfConfig
from modeling_mtpf import MtpfModel
from mtpf.analysis.metrics import encode_words, pairwise_mean_cosine, perturbed_similarity, token_homogeneity
from mtpf.weights import tiny_encoder_dir


def test_pairwise_mean_cosine_by_hand():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairs: (a,b)=0, (a,c)=1/sqrt2, (b,c)=1/sqrt2 -> mean of the 3 unordered pairs
    assert pairwise_mean_cosine(vectors) == pytest.approx(2 / math.sqrt(2) / 3, abs=1e-6)
    assert math.isnan(pairwise_mean_cosine(vectors[:1]))


def test_perturbed_similarity_by_hand():
    originals = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    variants = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, -3.0]])  # 2 variants each
    expected = (1 + 0 + 1 / math.sqrt(2) - 1) / 4
    assert perturbed_similarity(originals, variants) == pytest.approx(expected, abs=1e-6)


def test_model_metrics_match_a_manual_computation():
    torch.manual_seed(0)
    folder = tiny_encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    from transformers import AutoConfig

    model = MtpfModel(MtpfConfig.from_backbone(AutoConfig.from_pretrained(folder))).eval()
    sentences = [["Kwasniewski", "visited", "Slovenia", "."], ["Rain", "fell"]]
    pooled, tokens = encode_words(model, tokenizer, sentences)
    manual = []
    for words in sentences:
        encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**encoded).last_hidden_state[0, 1:-1]  # drop [CLS] and [SEP]
        unit = torch.nn.functional.normalize(hidden, dim=-1)
        n = len(unit)
        manual.append(sum(float(unit[i] @ unit[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1)))
        torch.testing.assert_close(tokens[len(manual) - 1], hidden, atol=1e-5, rtol=0)
    assert token_homogeneity(tokens) == pytest.approx(sum(manual) / 2, abs=1e-5)
    assert pooled.shape == (2, 32)
