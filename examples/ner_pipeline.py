"""Run a token-classification pipeline on an MTPF release with its NER slot merged in.

    python examples/ner_pipeline.py OUT [--labels O B-PER I-PER ...]

The head is untrained here: fine-tune it downstream (mtpf's evaluation suite does) before trusting its tags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("release", type=Path)
    parser.add_argument("--labels", nargs="+", default=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    parser.add_argument("--text", default="John Smith moved to Paris in 2019.")
    args = parser.parse_args()

    id2label = dict(enumerate(args.labels))
    model = AutoModelForTokenClassification.from_pretrained(
        args.release / "backbone",
        trust_remote_code=True,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = PeftModel.from_pretrained(model, args.release / "adapters" / "ner").merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(args.release / "backbone", trust_remote_code=True)
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer)
    for entity in tagger(args.text):
        print(entity)


if __name__ == "__main__":
    main()
