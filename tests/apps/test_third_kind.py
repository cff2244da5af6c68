"""A third app kind, defined in this file alone, is fine-tuned, exported and served with no edit elsewhere.

Sentence-pair scoring (STS-B-style regression): an input is a pair of texts, the model reads them as one text joined
by the tokenizer's separator, a one-output head on the sentence embedding regresses the score, Spearman's rho is its
metric. Everything the rest of mtpf asks of a kind comes from the registration below: `mtpf finetune --task
pair_scoring` (its protocol's options on the command line), `mtpf export APP` (its own fidelity check) and
`POST /v1/score_pairs` (its own request type and answer).
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch
from datasets import Dataset
from fastapi.testclient import TestClient
from pydantic import Field
from scipy.stats import spearmanr
from transformers import DataCollatorWithPadding

from modeling_mtpf import MtpfForSequenceClassification
from mtpf.apps.kinds import APP_KINDS, AppKind, TrainedApp, register_app_kind
from mtpf.cli import main
from mtpf.training.downstream import (
    AdapterProtocol,
    DownstreamHead,
    DownstreamRun,
    build_adapter_model,
    train_two_phases,
)
from tests.conftest import real_encoder_dir

KIND = "pair_scoring"
JOIN = " [SEP] "  # the BERT tokenizer reads it as its separator token
Sentence = Annotated[str, Field(pattern=r"\S")]


@dataclass
class PairScoringProtocol(AdapterProtocol):
    warmup_epochs: float = field(default=1, metadata={"help": "Head-only epochs."})
    epochs: float = field(default=2, metadata={"help": "Joint LoRA + head epochs."})
    batch_size: int = field(default=8, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the joint phase."})
    warmup_learning_rate: float | None = field(default=1e-2, metadata={"help": "Learning rate of the head alone."})
    max_length: int = field(default=48, metadata={"help": "Sub-tokens per pair."})


def read_pairs(path: Path) -> tuple[list[str], list[float]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [row["sentence1"] + JOIN + row["sentence2"] for row in rows], [float(row["score"]) for row in rows]


def rho(truth, predicted) -> float:
    return round(100 * float(spearmanr(truth, predicted).statistic), 4)


def train_pair_scorer(loaded, data: str, data_root: str, protocol: PairScoringProtocol, seed: int) -> TrainedApp:
    folder = Path(data) if Path(data).is_dir() else Path(data_root) / data
    splits = {split: read_pairs(folder / f"{split}.jsonl") for split in ("train", "dev", "test")}

    def encoded(split: str) -> Dataset:
        texts, scores = splits[split]
        tokens = loaded.tokenizer(texts, truncation=True, max_length=protocol.max_length)
        return Dataset.from_dict({**tokens, "labels": scores})

    torch.manual_seed(seed)
    model = build_adapter_model(loaded, DownstreamHead(MtpfForSequenceClassification, ["score"], KIND, "tc"), protocol)
    with tempfile.TemporaryDirectory() as scratch:
        run = DownstreamRun(
            encoded("train"),
            encoded("dev"),
            DataCollatorWithPadding(loaded.tokenizer),
            dev_metrics=lambda p: {"spearman": rho(p.label_ids, p.predictions)},
            metric="eval_spearman",
            seed=seed,
            scratch=scratch,
            predictions=lambda logits: logits.squeeze(-1),
        )
        trainer, keep_best = train_two_phases(model, protocol, run)
        predicted = trainer.predict(encoded("test")).predictions
    scores = {
        "test_spearman": rho(splits["test"][1], predicted),
        "dev_spearman": float(keep_best.best_score),
        "best_epoch": keep_best.best_epoch,
    }
    return TrainedApp(KIND, model, folder.name, ["score"], scores, {"seed": seed})


def test_pairs(app: dict, sentences: int) -> tuple[list[str], list[float]]:
    texts, scores = read_pairs(Path(app["data"]) / "test.jsonl")
    return texts[:sentences], scores[:sentences]


test_pairs.__test__ = False  # a kind's function, not a test


def compare_scores(gold: list, references: list, outputs: list, encodings: list, id2label: dict) -> dict:
    report = {
        "spearman_pytorch": rho(gold, np.concatenate(references)[:, 0]),
        "spearman_onnx": rho(gold, np.concatenate(outputs)[:, 0]),
    }
    return report | {"spearman_drop": round(report["spearman_pytorch"] - report["spearman_onnx"], 4)}


PAIR_SCORING = AppKind(
    name=KIND,
    protocol=PairScoringProtocol,
    data_root=".",
    train=train_pair_scorer,
    test_texts=test_pairs,
    head_class="MtpfForSequenceClassification",
    slot="tc",
    onnx_output="sentence_logits",
    endpoint="score_pairs",
    answer=lambda output: {"score": float(output.logits[0])},
    compare_outputs=compare_scores,
    pipeline_tag="text-classification",
    label_kind="Output",
    score_rows=(("test", "Spearman rho x 100", "test_spearman"), ("dev", "Spearman rho x 100", "dev_spearman")),
    input_type=tuple[Sentence, Sentence],
    text_of=JOIN.join,
)


@pytest.fixture
def pair_scoring_kind():
    register_app_kind(PAIR_SCORING)
    yield PAIR_SCORING
    APP_KINDS.pop(KIND)


def write_pairs(folder: Path) -> Path:
    """Pairs scored by the share of their four words they have in common (0 to 1, as cross-encoders train on STS-B
    divided by 5): something a small encoder can learn."""
    words = ["red", "blue", "cat", "dog", "runs", "sleeps", "big", "small", "house", "river", "quickly", "today"]
    rng = random.Random(0)
    folder.mkdir()
    for split, count in (("train", 256), ("dev", 48), ("test", 48)):
        rows = []
        for _ in range(count):
            first = rng.sample(words, 4)
            shared = rng.randint(0, 4)
            second = first[:shared] + rng.sample([w for w in words if w not in first], 4 - shared)
            rows.append({"sentence1": " ".join(first), "sentence2": " ".join(second), "score": shared / 4})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return folder


def test_a_kind_defined_here_alone_finetunes_exports_and_serves(pair_scoring_kind, tmp_path):
    from mtpf.release import init_release
    from mtpf.serve.app import create_app
    from mtpf.serve.engine import Engine

    release = init_release(str(real_encoder_dir("splade-tiny")), tmp_path / "release", tpl_layers=1)
    data = write_pairs(tmp_path / "pairs")
    app = tmp_path / "app"
    main(["finetune", str(release), "--task", KIND, "--data", str(data), "--output", str(app), "--epochs", "4"])
    described = json.loads((app / "mtpf_app.json").read_text())
    assert described["task"] == KIND and described["protocol"]["epochs"] == 4  # its own protocol's option
    assert described["scores"]["test_spearman"] > 20  # it learned the pairs' scores (about 45 at this seed)
    assert "Spearman rho x 100" in (app / "README.md").read_text()

    exported = tmp_path / "export"
    main(["export", str(app), "--output", str(exported), "--quantize", "int8"])
    report = json.loads((exported / "export_report.json").read_text())
    fp32 = report["artifacts"]["model.onnx"]
    assert fp32["accepted"] and fp32["spearman_onnx"] == pytest.approx(fp32["spearman_pytorch"], abs=0.5)
    assert fp32["sentences"] == 48 and "spearman_drop" in report["artifacts"]["model.int8.onnx"]

    engine = Engine(str(release))
    engine.add_app("similarity", str(app))
    pairs = [["red cat runs today", "red cat runs today"], ["big dog sleeps quickly", "blue river house small"]]
    with TestClient(create_app(engine)) as client:
        answered = client.post("/v1/score_pairs", json={"model": "similarity", "input": pairs})
        single = client.post("/v1/score_pairs", json={"model": "similarity", "input": pairs[0]})
        not_a_pair = client.post("/v1/score_pairs", json={"model": "similarity", "input": "red cat"})
        wrong_kind = client.post("/v1/classify", json={"model": "similarity", "input": "red cat"})
        described = client.get("/v1/models/similarity").json()
    assert answered.status_code == 200, answered.text
    scores = [row["score"] for row in answered.json()["data"]]
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported / "model.onnx"))
    feeds = engine.tokenizer([JOIN.join(pair) for pair in pairs], padding=True, return_tensors="np")
    expected = session.run(None, {k: feeds[k] for k in ("input_ids", "attention_mask")})[0][:, 0]
    assert scores == pytest.approx(expected.tolist(), abs=1e-3)  # served = exported, within its fidelity bound
    assert scores[0] > scores[1]  # the identical pair scores higher
    assert single.json()["data"][0]["score"] == pytest.approx(scores[0], abs=1e-4)
    assert not_a_pair.status_code == 422 and not_a_pair.json()["error"]["param"] == "input"
    assert wrong_kind.status_code == 404 and "/v1/score_pairs" in wrong_kind.json()["error"]["message"]
    assert described["kind"] == KIND and described["endpoints"] == ["embeddings", "score_pairs"]
