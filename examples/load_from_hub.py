"""A downstream app: the MTPF backbone and each task adapter by Hub repo id.

    python examples/load_from_hub.py --repo-id ORG/NAME [--output outputs.safetensors]

Offline, run it from a `push_to_hub.py --dry-run DIR` folder: DIR/ORG/NAME and DIR/ORG/NAME-<task> sit where
the repo ids point when read as relative paths, so transformers and PEFT load them from disk (the path mapping).
"""

from __future__ import annotations

import argparse

import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer, pipeline

TEXTS = ["John Smith moved to Paris in 2019.", "The river floods every spring."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo-id", required=True, help="backbone repo; adapters are read from its config")
    parser.add_argument("--output", help="save the outputs to this safetensors file")
    args = parser.parse_args()

    backbone = AutoModel.from_pretrained(args.repo_id, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.repo_id, trust_remote_code=True)
    adapters = {task: backbone.adapter_source(task) for task in backbone.config.task_slots}  # repo ids
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    tensors = {}
    with torch.no_grad():
        tensors["base"] = backbone(**batch).pooler_output
        model = None
        for task, repo in adapters.items():  # each adapter by its own repo id
            if model is None:
                model = PeftModel.from_pretrained(backbone, repo, adapter_name=task)
            else:
                model.load_adapter(repo, adapter_name=task)
        for task in adapters:
            model.set_adapter(task)
            tensors[f"{task}.sentence"] = model(**batch).pooler_output

        labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
        torch.manual_seed(0)  # the token head is new: seed it so runs compare
        tagger_model = AutoModelForTokenClassification.from_pretrained(
            args.repo_id, trust_remote_code=True, id2label=dict(enumerate(labels))
        )
        tagger_model = PeftModel.from_pretrained(tagger_model, adapters["ner"]).merge_and_unload().eval()
        tensors["ner.token_logits"] = tagger_model(**batch).logits
        tagger = pipeline("token-classification", model=tagger_model, tokenizer=tokenizer)
        print(tagger(TEXTS[0]))
    for name, value in tensors.items():
        print(f"{name:24s} {tuple(value.shape)}")
    if args.output:
        save_file({name: value.contiguous() for name, value in tensors.items()}, args.output)


if __name__ == "__main__":
    main()
