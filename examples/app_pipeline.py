"""Run an app made by `python -m mtpf finetune` as the app itself would: transformers + PEFT + a pipeline, no mtpf.

python examples/app_pipeline.py RELEASE/backbone APP ["Sentence one." ...] [--output predictions.json]

An NER app gives entities (`pipeline("token-classification", aggregation_strategy="first")`), a classification
app gives its label and score (`pipeline("text-classification")`); the task is read from `APP/mtpf_app.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peft import PeftModel
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)

TEXTS = ["John Smith moved to Paris in 2019 to work for the United Nations."]
HEADS = {  # the app's task -> (head class, pipeline task, pipeline options)
    "ner": (AutoModelForTokenClassification, "token-classification", {"aggregation_strategy": "first"}),
    "classification": (AutoModelForSequenceClassification, "text-classification", {}),
}


def load_app(backbone: str, app: str):
    """The backbone's head class for the app's task, sized to its labels, with the app's LoRA and head on top."""
    description = json.loads((Path(app) / "mtpf_app.json").read_text(encoding="utf-8"))
    labels = {int(i): label for i, label in description["id2label"].items()}
    model = HEADS[description["task"]][0].from_pretrained(
        backbone,
        trust_remote_code=True,
        num_labels=len(labels),
        id2label=labels,
        label2id={label: i for i, label in labels.items()},
    )
    return PeftModel.from_pretrained(model, app).eval(), AutoTokenizer.from_pretrained(backbone), description["task"]


def plain(prediction: dict) -> dict:
    """A pipeline result with numpy scalars made JSON-friendly."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in prediction.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("backbone", help="the release's backbone folder (or its Hub repo id)")
    parser.add_argument("app", help="the app folder (or its Hub repo id)")
    parser.add_argument("texts", nargs="*", default=TEXTS)
    parser.add_argument("--output", type=Path, help="write the predictions (and raw logits) here as JSON")
    args = parser.parse_args()
    model, tokenizer, task = load_app(args.backbone, args.app)
    _, pipeline_task, options = HEADS[task]
    runner = pipeline(pipeline_task, model=model, tokenizer=tokenizer, **options)
    predictions = []
    for text in args.texts:
        found = runner(text)
        found = [plain(p) for p in (found if isinstance(found, list) else [found])]
        predictions.append(found)
        print(text)
        for p in found:
            print(f"  {p.get('entity_group') or p.get('label')!s:>12s} {p.get('word', '')!r} ({p['score']:.2f})")
    if args.output:
        batch = tokenizer(args.texts, padding=True, return_tensors="pt")
        logits = model(**batch).logits.tolist()
        args.output.write_text(json.dumps({"task": task, "predictions": predictions, "logits": logits}), "utf-8")


if __name__ == "__main__":
    main()
