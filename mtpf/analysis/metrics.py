"""The two interference measures of paper Sec. 5, for any encoder and slot.

- perturbed similarity: mean cosine between a sentence's embedding and those of its entity-swapped variants
  (rises when the model is optimised for NER: different entities of one type look alike);
- token homogeneity: mean pairwise cosine among the token embeddings of one sentence (special tokens and padding
  excluded), averaged over sentences (rises when the model is optimised for TC).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from mtpf.data.conll import TaggedSentence
from mtpf.data.tokens import model_inputs

Encoder = Callable[..., object]  # a model whose output has last_hidden_state and pooler_output


@torch.no_grad()
def encode_words(
    model: Encoder,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[list[str]],
    max_length: int = 128,
    batch_size: int = 64,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sentence embeddings (mean pooling) and, per sentence, its content-token embeddings."""
    pooled, tokens = [], []
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start : start + batch_size]
        encoded = tokenizer(
            batch,
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        special = encoded.pop("special_tokens_mask").bool()
        output = model(**model_inputs(encoded))
        pooled.append(output.pooler_output.float())
        keep = encoded["attention_mask"].bool() & ~special
        tokens += [output.last_hidden_state[i][keep[i]].float() for i in range(len(batch))]
    return torch.cat(pooled), tokens


def pairwise_mean_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine over all pairs i != j (nan for fewer than 2 vectors)."""
    count = len(vectors)
    if count < 2:
        return float("nan")
    unit = F.normalize(vectors, dim=-1)
    similarity = unit @ unit.T
    return float((similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1)))


def token_homogeneity(token_embeddings: list[torch.Tensor]) -> float:
    values = [pairwise_mean_cosine(t) for t in token_embeddings if len(t) >= 2]
    return float(sum(values) / len(values))


def perturbed_similarity(originals: torch.Tensor, variants: torch.Tensor) -> float:
    """`variants` holds each original's k variants in order: rows [i*k, (i+1)*k)."""
    per = variants.shape[0] // originals.shape[0]
    repeated = originals.repeat_interleave(per, dim=0)
    return float(F.cosine_similarity(repeated, variants, dim=-1).mean())


def interference_metrics(
    model: Encoder,
    tokenizer: PreTrainedTokenizerBase,
    perturbed: list[tuple[TaggedSentence, list[TaggedSentence]]],
    homogeneity_sentences: list[TaggedSentence],
    max_length: int = 128,
) -> dict[str, float]:
    originals, _ = encode_words(model, tokenizer, [s.tokens for s, _ in perturbed], max_length)
    variants, _ = encode_words(model, tokenizer, [v.tokens for _, vs in perturbed for v in vs], max_length)
    _, tokens = encode_words(model, tokenizer, [s.tokens for s in homogeneity_sentences], max_length)
    return {
        "perturbed_similarity": perturbed_similarity(originals, variants),
        "token_homogeneity": token_homogeneity(tokens),
    }
