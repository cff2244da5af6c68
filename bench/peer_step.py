"""Benchmark 8: our contrastive step and encoder against the peer users would pick, sentence-transformers.

Same model (all-MiniLM-L6-v2), same pairs, batch size and length limit, same process:
  - training: our `pf_tc` step (`MtpfTrainer.training_step` + `optimizer.step()`, InfoNCE at temperature 0.05)
    vs `SentenceTransformerTrainer.training_step` + `optimizer.step()` with `MultipleNegativesRankingLoss`
    (scale 20 = 1 / 0.05); real (unpadded) tokens/s and the ratio ours / theirs (target >= 1.0);
  - gradient caching: the same with our GradCache (`--tc_mini_batch_size`) vs `CachedMultipleNegativesRankingLoss`,
    both embedding `--mini` texts per forward (ours cuts the anchors-then-positives batch into chunks of that many
    texts; theirs embeds each column in mini-batches of that many);
  - encoding: `MtpfModel.encode` vs `SentenceTransformer.encode` on the same CoNLL-2003 sentences (target >= 1.0),
    and the largest difference between the two embeddings (they must be the same function).

    python bench/peer_step.py [--steps 6] [--repeats 3] [--mini 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import bench_trainer, best_of, masks_of, optimizer_step, roofline, write_report

from mtpf.data.conll import ConllFormat, read_conll
from mtpf.data.roots import CONLL_TEST
from mtpf.models import load_model
from mtpf.training.args import parse_args
from mtpf.weights import resolve_model_path


def ours(config: str, steps: int, workdir: str, mini: int = 0) -> tuple[float, list[list[str]], int]:
    """Seconds per timed pf_tc step (GradCache with `mini` texts per forward when set), the texts of each step's
    pairs (for the peer), and real tokens per step."""
    trainer = bench_trainer(
        config, workdir, steps, "--mode", "pf_tc", "--analysis_steps", "0", "--tc_mini_batch_size", str(mini)
    )
    tokenizer = trainer.processing_class
    texts, durations, tokens = [], [], 0
    for step in range(steps + 1):
        inputs = trainer.train_dataset[step]
        texts.append(tokenizer.batch_decode(inputs["tc"]["input_ids"], skip_special_tokens=True))
        start = time.perf_counter()
        optimizer_step(trainer, inputs)
        durations.append(time.perf_counter() - start)
        tokens += sum(int(m.sum()) for m in masks_of(inputs)) if step else 0
    return sum(durations[1:]) / steps, texts, tokens // steps


def peer(step_texts: list[list[str]], max_length: int, workdir: str, mini: int = 0) -> float:
    """Seconds per timed step of SentenceTransformerTrainer + MultipleNegativesRankingLoss on the same pairs
    (CachedMultipleNegativesRankingLoss with mini-batches of `mini` when set)."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss

    model = SentenceTransformer(str(resolve_model_path("offline:minilm-l6")), device="cpu")
    model.max_seq_length = max_length
    half = len(step_texts[0]) // 2  # our TC batch is anchors then positives
    rows = {
        "anchor": [t for texts in step_texts for t in texts[:half]],
        "positive": [t for texts in step_texts for t in texts[half:]],
    }
    args = SentenceTransformerTrainingArguments(
        output_dir=workdir,
        per_device_train_batch_size=half,
        use_cpu=True,
        report_to=[],
        max_steps=len(step_texts),
        learning_rate=5e-5,
    )
    if mini:
        loss = CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=mini)
    else:
        loss = MultipleNegativesRankingLoss(model, scale=20.0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), loss=loss)
    trainer.create_optimizer_and_scheduler(len(step_texts))
    trainer.current_gradient_accumulation_steps = 1  # set by `train()`, which this loop replaces
    durations = []
    for inputs in trainer.get_train_dataloader():
        start = time.perf_counter()
        trainer.training_step(trainer.model, inputs)
        trainer.optimizer.step()
        trainer.model.zero_grad(set_to_none=True)
        durations.append(time.perf_counter() - start)
    return sum(durations[1:]) / (len(durations) - 1)


def encoders(sentences: list[str], repeats: int) -> dict:
    from sentence_transformers import SentenceTransformer

    loaded = load_model("offline:minilm-l6")
    mine = loaded.fresh_backbone().eval()
    theirs = SentenceTransformer(str(resolve_model_path("offline:minilm-l6")), device="cpu")

    ours_s = best_of(lambda: mine.encode(sentences, loaded.tokenizer, batch_size=32), repeats, warmup=1)
    peer_s = best_of(lambda: theirs.encode(sentences, batch_size=32, convert_to_tensor=True), repeats, warmup=1)
    difference = (
        (mine.encode(sentences[:64], loaded.tokenizer) - theirs.encode(sentences[:64], convert_to_tensor=True))
        .abs()
        .max()
    )
    return {
        "sentences": len(sentences),
        "ours_sentences_per_s": round(len(sentences) / ours_s, 1),
        "peer_sentences_per_s": round(len(sentences) / peer_s, 1),
        "ratio": round(peer_s / ours_s, 3),
        "max_abs_difference": float(difference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mini", type=int, default=32, help="Texts per forward in the gradient-cached pair.")
    parser.add_argument("--output", default="bench/results/peer_step.json")
    options = parser.parse_args()
    max_length = parse_args([options.config])[1].max_seq_length
    training = {"plain": [], "cached": []}
    for _ in range(options.repeats):
        for name, mini in (("plain", 0), ("cached", options.mini)):
            with tempfile.TemporaryDirectory() as workdir:
                seconds, texts, tokens = ours(options.config, options.steps, workdir, mini)
                peer_seconds = peer(texts, max_length, workdir, mini)
            training[name].append(
                {"ours_s_per_step": seconds, "peer_s_per_step": peer_seconds, "real_tokens_per_step": tokens}
            )
            print(name, training[name][-1], flush=True)
    ratios = {
        name: round(statistics.median(t["peer_s_per_step"] / t["ours_s_per_step"] for t in runs), 3)
        for name, runs in training.items()
    }
    sentences = [" ".join(s.tokens) for s in read_conll(Path(CONLL_TEST), ConllFormat())][:512]
    results = {
        **roofline(),
        "training": training["plain"],
        "training_ratio_ours_over_peer_tokens_per_s": ratios["plain"],
        "cached_training": training["cached"],
        "cached_mini_batch": options.mini,
        "cached_training_ratio_ours_over_peer_tokens_per_s": ratios["cached"],
        "encoding": encoders(sentences, options.repeats),
    }
    print(results)
    write_report(options.output, " ".join(["python", *sys.argv]), results)


if __name__ == "__main__":
    main()
