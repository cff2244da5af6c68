"""Sentence embeddings of a release through sentence-transformers, next to mtpf's own definition.

    python examples/sentence_transformers_release.py OUT [--output embeddings.safetensors]

The backbone folder carries sentence-transformers' files (modules.json, 1_Pooling, 2_Normalize), so
`SentenceTransformer(OUT/backbone, trust_remote_code=True)` embeds as the backbone alone; `config_kwargs=
{"active_slot": "tc"}` merges the `tc` slot while loading. No mtpf import: what an app would run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

TEXTS = ["John Smith moved to Paris in 2019.", "The river floods every spring.", "Great food, slow service!"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("release", type=Path, help="release folder with backbone/ and adapters/<task>/")
    parser.add_argument("--task", default="tc", help="the slot whose sentence embeddings to compare")
    parser.add_argument("--output", type=Path, help="save every embedding to this safetensors file")
    args = parser.parse_args()
    backbone_dir = str(args.release / "backbone")

    plain = SentenceTransformer(backbone_dir, trust_remote_code=True, device="cpu")
    slotted = SentenceTransformer(
        backbone_dir, trust_remote_code=True, device="cpu", config_kwargs={"active_slot": args.task}
    )
    backbone = AutoModel.from_pretrained(backbone_dir, trust_remote_code=True)
    peft_model = PeftModel.from_pretrained(backbone, str(args.release / "adapters" / args.task)).eval()
    tensors = {
        "st.base": plain.encode(TEXTS, convert_to_tensor=True),
        f"st.{args.task}": slotted.encode(TEXTS, convert_to_tensor=True),
        f"mtpf.{args.task}": peft_model.encode(TEXTS),  # MtpfModel.encode under the active adapter
    }
    with torch.no_grad():
        tensors["mtpf.base"] = AutoModel.from_pretrained(backbone_dir, trust_remote_code=True).encode(TEXTS)
    for name, value in tensors.items():
        print(f"{name:10s} {tuple(value.shape)} norm={value.norm(dim=-1).mean().item():.4f}")
    for task in ("base", args.task):
        gap = (tensors[f"st.{task}"].cpu() - tensors[f"mtpf.{task}"]).abs().max().item()
        print(f"{task}: max |sentence-transformers - mtpf| = {gap:.2e}")
    if args.output:
        save_file({name: value.cpu().contiguous() for name, value in tensors.items()}, str(args.output))


if __name__ == "__main__":
    main()
