"""The NER app kind: a tagger whose LoRA starts from the release's `ner` slot, trained by the very protocol the
evaluation suite scores (`train.py`, which `mtpf.evaluation` calls), so an app's test F1 is the number the suite
reports. Here: the registration, served answers (entities with character offsets) and the export's F1 check."""

from __future__ import annotations

from dataclasses import asdict

import torch

from mtpf.apps.kinds import AppKind, RowOutput, TrainedApp, register_app_kind
from mtpf.apps.ner.data import check_label_sets, load_ner_spec
from mtpf.apps.ner.train import DOWNSTREAM, NerProtocol, entity_f1, train_ner
from mtpf.data.roots import NER_DATA
from mtpf.training.downstream import DownstreamData, subsample


def train_tagger(loaded, data: str, data_root: str, protocol: NerProtocol, seed: int) -> TrainedApp:
    name, splits = load_ner_spec(data, data_root)
    labels = check_label_sets(splits, name)
    run, model = train_ner(loaded, DownstreamData(name, splits, labels), protocol, seed=seed)
    scores = {"test_f1": run.test_f1, "dev_f1": run.dev_f1, "best_epoch": run.best_epoch}
    return TrainedApp(DOWNSTREAM, model, name, labels, scores, asdict(run))


def tagger_test_texts(app: dict, sentences: int) -> tuple[list[str], list]:
    """The first `sentences` (seeded) test sentences, as texts and as the tagged sentences (gold)."""
    gold = subsample(load_ner_spec(app["data"], app.get("data_root") or NER_DATA)[1]["test"], 1.0, sentences)
    return [" ".join(s.tokens) for s in gold], gold


def entities_of(
    probabilities: torch.Tensor, word_ids: list, offsets, id2label: dict[int, str], text: str
) -> list[dict]:
    """BIO entities with character offsets: each word tagged by its first sub-token (as the app was trained)."""
    words: list[tuple[str, float, int, int]] = []  # (tag, score, start, end) per word
    previous = None
    for position, word in enumerate(word_ids):
        if word is None:
            continue
        start, end = (int(x) for x in offsets[position])
        if word != previous:
            best = int(probabilities[position].argmax())
            words.append((id2label[best], float(probabilities[position, best]), start, end))
        else:
            words[-1] = (*words[-1][:3], end)
        previous = word
    return bio_entities(words, text)


def bio_entities(words: list[tuple[str, float, int, int]], text: str) -> list[dict]:
    """Group tagged words into entities: a B- starts one, an I- of the same type right after continues it (an I-
    after anything else starts one); each word is tagged by its first sub-token, so the entities equal transformers'
    token-classification pipeline with `aggregation_strategy="first"`; the score is the words' mean."""
    entities: list[dict] = []
    current: dict | None = None
    for tag, score, start, end in words:
        prefix, _, kind = tag.partition("-")
        if tag == "O" or not kind:
            current = None
        elif prefix == "I" and current is not None and current["entity_group"] == kind:
            current["end"], current["scores"] = end, [*current["scores"], score]
        else:
            current = {"entity_group": kind, "start": start, "end": end, "scores": [score]}
            entities.append(current)
    return [
        {
            "entity_group": e["entity_group"],
            "word": text[e["start"] : e["end"]],
            "start": e["start"],
            "end": e["end"],
            "score": sum(e["scores"]) / len(e["scores"]),
        }
        for e in entities
    ]


def encode_words(tokenizer, texts: list[str], gold: list, max_length: int):
    """The export check's batch, tokenised by the gold words so that each word's first sub-token meets its tag."""
    return tokenizer(
        [sentence.tokens for sentence in gold],
        is_split_into_words=True,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )


def compare_tagger_outputs(gold: list, references: list, outputs: list, encodings: list, id2label: dict) -> dict:
    """Entity F1 of the PyTorch and the ONNX token logits against the gold tags (the export's quality check)."""
    tags = [sentence.tags for sentence in gold]
    report = {}
    for name, logits in (("pytorch", references), ("onnx", outputs)):
        predicted, start = [], 0
        for batch_logits, encoding in zip(logits, encodings):
            predicted += first_subtoken_tags(batch_logits, encoding, gold[start : start + len(batch_logits)], id2label)
            start += len(batch_logits)
        report[f"f1_{name}"] = round(entity_f1(tags, predicted), 4)
    report["f1_drop"] = round(report["f1_pytorch"] - report["f1_onnx"], 4)
    return report


def first_subtoken_tags(logits, encoding, sentences: list, id2label: dict) -> list[list[str]]:
    """Word tags from token logits: each word's first sub-token, `O` for words the length limit cut off."""
    rows = []
    for row, sentence in enumerate(sentences):
        tags, previous = [], None
        for position, word in enumerate(encoding.word_ids(row)):
            if word is not None and word != previous:
                tags.append(id2label[int(logits[row, position].argmax())])
            previous = word
        rows.append(tags + ["O"] * (len(sentence.tokens) - len(tags)))
    return rows


def tagger_answer(output: RowOutput) -> dict:
    """The entities of one text, with character offsets (what /v1/ner answers per input)."""
    probabilities = torch.softmax(torch.as_tensor(output.logits), dim=-1)
    return {"entities": entities_of(probabilities, output.word_ids, output.offsets, output.id2label, output.text)}


NER_KIND = register_app_kind(
    AppKind(
        name="ner",
        protocol=NerProtocol,
        data_root=NER_DATA,
        train=train_tagger,
        test_texts=tagger_test_texts,
        head_class="MtpfForTokenClassification",
        slot="ner",
        onnx_output="token_logits",
        endpoint="ner",
        answer=tagger_answer,
        compare_outputs=compare_tagger_outputs,
        encode_check=encode_words,
        pipeline_tag="token-classification",
        label_kind="Entity types",
        score_rows=(("test", "seqeval entity F1 (strict IOB2)", "test_f1"), ("dev", "seqeval entity F1", "dev_f1")),
        pipeline_options={"aggregation_strategy": "first"},  # words tagged by their first sub-token, as trained
    )
)
