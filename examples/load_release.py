"""Load an MTPF release exactly as a downstream app would, without the mtpf package.

    python examples/load_release.py OUT [--output embeddings.safetensors]

The backbone comes through transformers' remote code, each task-primary LoRA through PEFT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

TEXTS = ["John Smith moved to Paris in 2019.", "The river floods every spring."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("release", type=Path, help="release folder with backbone/ and adapters/<task>/")
    parser.add_argument("--output", type=Path, help="save every embedding to this safetensors file")
    args = parser.parse_args()

    backbone = AutoModel.from_pretrained(args.release / "backbone", trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.release / "backbone", trust_remote_code=True)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    tensors = {}
    with torch.no_grad():
        tensors["base"] = backbone(**batch).pooler_output  # no adapter: the shared backbone alone

        # 1) PEFT by hand: one named adapter per task, switched with set_adapter.
        tasks = list(backbone.config.task_slots)
        model = PeftModel.from_pretrained(backbone, args.release / "adapters" / tasks[0], adapter_name=tasks[0])
        for task in tasks[1:]:
            model.load_adapter(args.release / "adapters" / task, adapter_name=task)
        for task in tasks:
            model.set_adapter(task)
            output = model(**batch)
            tensors[f"{task}.sentence"] = output.pooler_output
            tensors[f"{task}.tokens"] = output.last_hidden_state

        # 2) The convenience: attach every slot the config records.
        fresh = AutoModel.from_pretrained(args.release / "backbone", trust_remote_code=True).eval()
        slotted = fresh.load_task_adapters()
        for task in tasks:
            slotted.set_adapter(task)
            tensors[f"{task}.sentence.from_config"] = slotted(**batch).pooler_output

    for name, value in tensors.items():
        print(f"{name:32s} {tuple(value.shape)} first={value.flatten()[0].item():+.6f}")
    if args.output:
        save_file({name: value.contiguous() for name, value in tensors.items()}, str(args.output))


if __name__ == "__main__":
    main()
