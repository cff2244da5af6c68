"""Build an NER teacher offline: fine-tune a real encoder for token classification on pre-finetuning NER data.

The paper distils NuNER, which is not available offline; this fine-tunes a packaged encoder on WikiANN-en and
wikigold (never a downstream evaluation set) and saves it as a folder that `PseudoLabelSettings.teacher` takes.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import Dataset
from seqeval.metrics import f1_score
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

from mtpf.data.conll import ConllFormat, TaggedSentence, read_conll
from mtpf.data.roots import NER_PRETRAIN_DATA
from mtpf.data.tokens import IGNORE_INDEX, first_subtoken_labels
from mtpf.io import atomic_directory
from mtpf.weights import resolve_model_path

logger = logging.getLogger(__name__)
SHARED = NER_PRETRAIN_DATA


@dataclass
class TeacherArguments:
    base: str = field(
        default="offline:minilm-l6", metadata={"help": "Encoder to fine-tune (folder, Hub id, offline:NAME)."}
    )
    output: str = field(default="outputs/teacher-minilm-l6", metadata={"help": "Teacher folder to write."})
    train_files: list[str] = field(
        default_factory=lambda: [
            f"{SHARED}/wikiann_en/train.txt#token_prefix=en:",
            f"{SHARED}/wikigold/wikigold.conll.txt#scheme=iob1",
        ],
        metadata={"help": "CoNLL files, each PATH[#scheme=iob1|bio,token_prefix=P,tag_first=1]."},
    )
    dev_file: str = field(default=f"{SHARED}/wikiann_en/dev.txt#token_prefix=en:", metadata={"help": "Dev CoNLL file."})
    max_train_sentences: int | None = field(default=5000, metadata={"help": "Cap on training sentences (None: all)."})
    max_dev_sentences: int = field(default=1000, metadata={"help": "Cap on dev sentences."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Sentences per batch."})
    max_length: int = field(default=128, metadata={"help": "Sub-tokens per sentence."})
    seed: int = field(default=0, metadata={"help": "Seed for shuffling and the head's init."})


def parse_conll_spec(spec: str) -> tuple[str, ConllFormat]:
    """`PATH#key=value,...` -> the path and its ConllFormat."""
    path, _, options = spec.partition("#")
    values: dict = {}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key not in ("scheme", "token_prefix", "tag_first"):
            raise ValueError(f"{spec}: unknown option {key!r} (scheme, token_prefix, tag_first).")
        values[key] = value in ("1", "true") if key == "tag_first" else value
    return path, ConllFormat(**values)


def read_specs(specs: list[str], limit: int | None, seed: int) -> list[TaggedSentence]:
    sentences = [sentence for spec in specs for sentence in read_conll(*parse_conll_spec(spec))]
    if limit is not None and len(sentences) > limit:
        order = np.random.default_rng(seed).permutation(len(sentences))[:limit]
        sentences = [sentences[i] for i in sorted(order)]
    return sentences


def build_teacher(args: TeacherArguments) -> Path:
    train = read_specs(args.train_files, args.max_train_sentences, args.seed)
    dev = read_specs([args.dev_file], args.max_dev_sentences, args.seed)
    labels = sorted({tag for sentence in train for tag in sentence.tags})
    label2id = {label: i for i, label in enumerate(labels)}
    base = resolve_model_path(args.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForTokenClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id, use_safetensors=True
    )
    train_set, dev_set = (_encode(tokenizer, part, label2id, args.max_length) for part in (train, dev))
    output = Path(args.output)
    with atomic_directory(output) as staging:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=str(staging / "checkpoints"),
                num_train_epochs=args.epochs,
                learning_rate=args.learning_rate,
                per_device_train_batch_size=args.batch_size,
                per_device_eval_batch_size=64,
                warmup_steps=0.1,
                weight_decay=0.01,
                seed=args.seed,
                save_strategy="no",
                report_to=[],
                logging_steps=50,
                use_cpu=True,
            ),
            train_dataset=train_set,
            data_collator=DataCollatorForTokenClassification(tokenizer),
        )
        trainer.train()
        dev_f1 = _dev_f1(trainer, dev_set, dev, labels)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        settings = {name: value for name, value in asdict(args).items() if name != "output"}  # how it was built
        info = {**settings, "train_sentences": len(train), "dev_sentences": len(dev), "dev_f1": dev_f1}
        info["labels"] = labels
        info["built_with"] = build_environment()
        (staging / "teacher_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    logger.info("Teacher written to %s (dev F1 %.3f)", output, dev_f1)
    return output


def build_environment() -> dict[str, object]:
    """What else shapes the weights: the same settings with another torch or thread count sum floats in another order,
    and two builds of one teacher on two machines give measurably different pseudo-label clusters
    (`results/quality/teacher-clusters/README.md`)."""
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _encode(tokenizer, sentences: list[TaggedSentence], label2id: dict[str, int], max_length: int) -> Dataset:
    rows = []
    for sentence in sentences:
        encoded = tokenizer(sentence.tokens, is_split_into_words=True, truncation=True, max_length=max_length)
        tag_ids = [label2id.get(tag, label2id.get("O", 0)) for tag in sentence.tags]
        rows.append({**encoded, "labels": first_subtoken_labels(encoded.word_ids(), tag_ids)})
    return Dataset.from_list(rows)


def _dev_f1(trainer: Trainer, dev_set: Dataset, dev: list[TaggedSentence], labels: list[str]) -> float:
    predictions = trainer.predict(dev_set)
    predicted = predictions.predictions.argmax(-1)
    gold_tags, predicted_tags = [], []
    for row, sentence in enumerate(dev):
        keep = np.asarray(dev_set[row]["labels"]) != IGNORE_INDEX
        tags = [labels[i] for i in predicted[row][: len(keep)][keep]]
        gold_tags.append(sentence.tags[: len(tags)])
        predicted_tags.append(tags)
    return float(f1_score(gold_tags, predicted_tags))


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(TeacherArguments).parse_args_into_dataclasses(args=argv)
    print(f"Teacher written to {build_teacher(args)}")
