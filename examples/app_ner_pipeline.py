"""Tag entities with an app made by `python -m mtpf finetune`, as the app would: transformers + PEFT, no mtpf.

python examples/app_ner_pipeline.py RELEASE/backbone APP ["Sentence one." ...] [--output entities.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

TEXTS = ["John Smith moved to Paris in 2019 to work for the United Nations."]


def load_app(backbone: str, app: str):
    """The backbone's token-classification head sized to the app's labels, with the app's LoRA and head on top."""
    labels = {int(i): label for i, label in json.loads((Path(app) / "mtpf_app.json").read_text())["id2label"].items()}
    model = AutoModelForTokenClassification.from_pretrained(
        backbone,
        trust_remote_code=True,
        num_labels=len(labels),
        id2label=labels,
        label2id={label: i for i, label in labels.items()},
    )
    return PeftModel.from_pretrained(model, app).eval(), AutoTokenizer.from_pretrained(backbone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("backbone", help="the release's backbone folder (or its Hub repo id)")
    parser.add_argument("app", help="the app folder (or its Hub repo id)")
    parser.add_argument("texts", nargs="*", default=TEXTS)
    parser.add_argument("--output", type=Path, help="write the entities (and raw per-token logits) here as JSON")
    args = parser.parse_args()
    model, tokenizer = load_app(args.backbone, args.app)
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple")
    entities = [
        [{**e, "score": float(e["score"]), "start": int(e["start"]), "end": int(e["end"])} for e in tagger(text)]
        for text in args.texts
    ]
    for text, found in zip(args.texts, entities):
        print(text)
        for entity in found:
            print(f"  {entity['entity_group']:>8s} {entity['word']!r} ({entity['score']:.2f})")
    if args.output:
        batch = tokenizer(args.texts, padding=True, return_tensors="pt")
        logits = model(**batch).logits.tolist()
        args.output.write_text(json.dumps({"entities": entities, "logits": logits}), encoding="utf-8")


if __name__ == "__main__":
    main()
