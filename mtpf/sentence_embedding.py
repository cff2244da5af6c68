"""The sentence-embedding definition (pooling, normalisation, length) in sentence-transformers' own files.

A base encoder that ships sentence-transformers files (`modules.json`, `sentence_bert_config.json`,
`1_Pooling/config.json`) defines how its sentence embeddings are made; MTEB's public scores are computed that
way. `read_sentence_embedding` takes that definition into `MtpfConfig` (pooling, normalize, max_seq_length);
`write_sentence_transformers_files` writes it back next to a release's backbone, so that
`SentenceTransformer(backbone_dir, trust_remote_code=True)` embeds exactly as `MtpfModel.encode` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from configuration_mtpf import POOLING_MODES, MtpfConfig
from mtpf.errors import MtpfError
from mtpf.io import atomic_write_text

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "sentence_bert_config.json"
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
# The module types as every sentence-transformers release since 2.x reads them (6.x maps them to its own).
TRANSFORMER_TYPE = "sentence_transformers.models.Transformer"
POOLING_TYPE = "sentence_transformers.models.Pooling"
NORMALIZE_TYPE = "sentence_transformers.models.Normalize"
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class SentenceEmbeddingError(MtpfError, ValueError):
    """Sentence-transformers files that mtpf cannot reproduce; the message names the file."""


def read_sentence_embedding(folder: str | Path) -> dict[str, Any]:
    """`{pooling, normalize, max_seq_length}` from a folder's sentence-transformers files ({} without them)."""
    folder = Path(folder)
    modules_file = folder / MODULES_FILE
    if not modules_file.is_file():
        return {}
    modules = _read_json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise SentenceEmbeddingError(f"{modules_file}: expected a list of modules, each with a 'type'.")
    kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
    unsupported = [kind for kind in kinds if kind not in ("Transformer", "Pooling", "Normalize")]
    if unsupported or kinds[:1] != ["Transformer"] or kinds.count("Pooling") != 1:
        raise SentenceEmbeddingError(
            f"{modules_file}: modules {kinds}; mtpf reproduces Transformer -> Pooling [-> Normalize] only "
            f"(unsupported: {unsupported or 'the order'})."
        )
    pooling_entry = modules[kinds.index("Pooling")]
    settings: dict[str, Any] = {
        "pooling": _pooling_mode(folder / pooling_entry.get("path", POOLING_DIR) / "config.json"),
        "normalize": "Normalize" in kinds,
    }
    st_config = folder / ST_CONFIG_FILE
    if st_config.is_file():
        length = _read_json(st_config).get("max_seq_length")
        if length is not None:
            settings["max_seq_length"] = int(length)
    return settings


def _pooling_mode(path: Path) -> str:
    config = _read_json(path)
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in LEGACY_POOLING_KEYS.items() if config.get(key)]
        mode = modes[0] if len(modes) == 1 else modes
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode == "mean_tokens":
        mode = "mean"
    if mode not in POOLING_MODES:
        raise SentenceEmbeddingError(f"{path}: pooling {mode!r}; mtpf supports {list(POOLING_MODES)}.")
    if config.get("include_prompt") is False:
        raise SentenceEmbeddingError(f"{path}: include_prompt=false is not supported (mtpf uses no prompts).")
    return mode


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SentenceEmbeddingError(f"{path}: not a readable JSON file ({err}).") from err


def write_sentence_transformers_files(folder: str | Path, config: MtpfConfig, max_seq_length: int) -> None:
    """Write modules.json, sentence_bert_config.json, 1_Pooling/ (and 2_Normalize/) for `config`'s definition."""
    folder = Path(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": TRANSFORMER_TYPE},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": POOLING_TYPE},
    ]
    if config.normalize:
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": NORMALIZE_TYPE})
        (folder / NORMALIZE_DIR).mkdir(parents=True, exist_ok=True)
    pooling = {"word_embedding_dimension": config.hidden_size}
    pooling |= {key: config.pooling == name for key, name in LEGACY_POOLING_KEYS.items() if name in POOLING_MODES}
    pooling |= {"pooling_mode_mean_sqrt_len_tokens": False}
    (folder / POOLING_DIR).mkdir(parents=True, exist_ok=True)
    _write_json(folder / POOLING_DIR / "config.json", pooling)
    _write_json(folder / ST_CONFIG_FILE, {"max_seq_length": int(max_seq_length), "do_lower_case": False})
    _write_json(folder / MODULES_FILE, modules)


def _write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
