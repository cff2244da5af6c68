"""MTPF configuration: a BERT-like backbone config plus named task-primary LoRA slots.

Self-contained remote-code file (imports only transformers): it is copied next to the weights on
`save_pretrained`, so `AutoConfig.from_pretrained(..., trust_remote_code=True)` works without mtpf installed.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from transformers import AutoConfig, PretrainedConfig

# Where each supported backbone family keeps its transformer layers and the linear layers a slot can adapt.
# Roles are logical names so one slot definition works across families; "mlp" expands to both MLP linears.
BACKBONE_LAYOUTS: dict[str, dict[str, Any]] = {
    "bert": {
        "layers": "encoder.layer",
        "num_layers_attr": "num_hidden_layers",
        "modules": {
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "attn_out": "attention.output.dense",
            "mlp_in": "intermediate.dense",
            "mlp_out": "output.dense",
        },
    },
    "distilbert": {
        "layers": "transformer.layer",
        "num_layers_attr": "n_layers",
        "modules": {
            "query": "attention.q_lin",
            "key": "attention.k_lin",
            "value": "attention.v_lin",
            "attn_out": "attention.out_lin",
            "mlp_in": "ffn.lin1",
            "mlp_out": "ffn.lin2",
        },
    },
}
for _bert_like in ("roberta", "xlm-roberta", "camembert", "electra", "ernie"):
    BACKBONE_LAYOUTS[_bert_like] = BACKBONE_LAYOUTS["bert"]

ROLE_ALIASES = {"mlp": ("mlp_in", "mlp_out")}
DEFAULT_TASKS = ("ner", "tc")
DEFAULT_TARGET_ROLES = ("query", "key", "mlp")
REQUIRED_SLOT_FIELDS = ("r", "lora_alpha", "target_modules", "layers")
POOLING_MODES = ("mean", "cls", "max")


def backbone_layout(model_type: str) -> dict[str, Any]:
    """The module layout of a backbone family, or a clear error for an unsupported one."""
    if model_type not in BACKBONE_LAYOUTS:
        raise ValueError(
            f"Backbone model_type {model_type!r} is not supported: MTPF needs a BERT-like encoder with "
            f"per-layer query/key/MLP linears; supported types: {sorted(BACKBONE_LAYOUTS)}."
        )
    return BACKBONE_LAYOUTS[model_type]


def expand_roles(roles: list[str] | tuple[str, ...]) -> list[str]:
    """Expand role aliases ("mlp") and reject unknown names."""
    known = set(BACKBONE_LAYOUTS["bert"]["modules"])
    expanded: list[str] = []
    for role in roles:
        for name in ROLE_ALIASES.get(role, (role,)):
            if name not in known:
                raise ValueError(
                    f"Unknown target module role {role!r}; use one of {sorted(known | set(ROLE_ALIASES))}."
                )
            if name not in expanded:
                expanded.append(name)
    return expanded


def make_slot(
    num_layers: int,
    tpl_layers: int = 2,
    r: int = 32,
    lora_alpha: int = 64,
    lora_dropout: float = 0.0,
    target_modules: list[str] | tuple[str, ...] = DEFAULT_TARGET_ROLES,
    adapter: str | None = None,
) -> dict[str, Any]:
    """A slot definition on the last `tpl_layers` layers (the paper's default placement; 0 = every layer)."""
    tpl_layers = tpl_layers or num_layers
    if not 1 <= tpl_layers <= num_layers:
        raise ValueError(f"tpl_layers={tpl_layers} must be between 1 and the backbone's {num_layers} layers.")
    return {
        "r": r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "target_modules": list(target_modules),
        "layers": list(range(num_layers - tpl_layers, num_layers)),
        "adapter": adapter,
    }


def _with_rank(slot: dict[str, Any], rank: int | None) -> dict[str, Any]:
    """A slot definition with another rank and the alpha that keeps alpha / r (the update's scale)."""
    if rank is None:
        return slot
    alpha = slot["lora_alpha"] * rank / slot["r"]
    if rank < 1 or alpha != int(alpha):
        raise ValueError(
            f"A slot rank of {rank} with alpha / r = {slot['lora_alpha']}/{slot['r']} needs a positive rank and a "
            f"whole alpha (got {alpha:g})."
        )
    return {**slot, "r": rank, "lora_alpha": int(alpha)}


class MtpfConfig(PretrainedConfig):
    """Configuration of an MTPF model: the wrapped backbone's config and its task-primary adapter slots.

    Args:
        backbone_config: the encoder's own config (a dict with `model_type`, or a `PretrainedConfig`).
        task_slots: `{task: {r, lora_alpha, lora_dropout, target_modules, layers, adapter}}`; `target_modules`
            are roles (`query`, `key`, `value`, `attn_out`, `mlp_in`, `mlp_out`, `mlp`), `layers` are layer
            indices, `adapter` is where the trained slot lives (Hub repo id, or a path relative to this folder).
        pooling: how token embeddings become a sentence embedding: `mean` over the attention mask, `cls`, or `max`.
        normalize: L2-normalise the sentence embedding (sentence-transformers' `Normalize` module).
        max_seq_length: sub-tokens per text when embedding sentences (`MtpfModel.encode`, evaluation, serving);
            None means the tokenizer's limit. Pooling, normalize and this length are the one definition of a
            sentence embedding, read from the base's sentence-transformers files when it has them.
        active_slot: a slot merged into the backbone when the model is loaded, so tools that know nothing of PEFT
            (sentence-transformers, pipelines) use that task's encoder: pass it at load time, e.g.
            `SentenceTransformer(folder, trust_remote_code=True, config_kwargs={"active_slot": "tc"})`.
    """

    model_type = "mtpf"
    sub_configs = {"backbone_config": AutoConfig}  # noqa: RUF012  (transformers API)

    def __init__(
        self,
        backbone_config: dict[str, Any] | PretrainedConfig | None = None,
        task_slots: dict[str, dict[str, Any]] | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        max_seq_length: int | None = None,
        active_slot: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(backbone_config, dict):
            backbone_config = self._backbone_config_from_dict(backbone_config)
        self.backbone_config = backbone_config
        self.task_slots = copy.deepcopy(task_slots) if task_slots is not None else {}
        if pooling not in POOLING_MODES:
            raise ValueError(f"MtpfConfig.pooling must be one of {POOLING_MODES}, got {pooling!r}.")
        if max_seq_length is not None and int(max_seq_length) < 1:
            raise ValueError(f"MtpfConfig.max_seq_length must be a positive sub-token count, got {max_seq_length}.")
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.max_seq_length = None if max_seq_length is None else int(max_seq_length)
        self.active_slot = active_slot
        super().__init__(**kwargs)
        if backbone_config is not None:
            for task in self.task_slots:
                self.validate_slot(task)

    @staticmethod
    def _backbone_config_from_dict(data: dict[str, Any]) -> PretrainedConfig:
        if "model_type" not in data:
            raise ValueError("MtpfConfig.backbone_config is missing the field 'model_type'.")
        data = dict(data)
        return AutoConfig.for_model(data.pop("model_type"), **data)

    @classmethod
    def from_backbone(
        cls,
        backbone_config: PretrainedConfig,
        tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS,
        tpl_layers: int = 2,
        sentence_embedding: dict[str, Any] | None = None,
        layers_by_task: dict[str, int] | None = None,
        ranks_by_task: dict[str, int] | None = None,
        **slot_kwargs: Any,
    ) -> MtpfConfig:
        """A config wrapping `backbone_config` with one identical slot per task on the last `tpl_layers` layers
        (`layers_by_task` places some tasks' slots on another number of last layers, 0 = all; `ranks_by_task` gives
        some tasks' slots another rank, their alpha scaled with it so that alpha / r, the update's scale, stays).

        `sentence_embedding` holds `pooling`, `normalize` and `max_seq_length` (defaults: mean, normalised,
        the tokenizer's limit).
        """
        num_layers = cls._num_layers_of(backbone_config)
        layers_by_task, ranks_by_task = layers_by_task or {}, ranks_by_task or {}
        for what, given in (("layers", layers_by_task), ("ranks", ranks_by_task)):
            unknown = sorted(set(given) - set(tasks))
            if unknown:
                raise ValueError(f"Slot {what} given for {unknown}, which are not among the slots {list(tasks)}.")
        slots = {
            task: _with_rank(
                make_slot(num_layers, layers_by_task.get(task, tpl_layers), **slot_kwargs), ranks_by_task.get(task)
            )
            for task in tasks
        }
        return cls(backbone_config=backbone_config, task_slots=slots, **(sentence_embedding or {}))

    @staticmethod
    def _num_layers_of(backbone_config: PretrainedConfig) -> int:
        layout = backbone_layout(backbone_config.model_type)
        return int(getattr(backbone_config, layout["num_layers_attr"]))

    @property
    def num_layers(self) -> int:
        return self._num_layers_of(self._require_backbone())

    @property
    def hidden_size(self) -> int:
        backbone = self._require_backbone()
        return int(getattr(backbone, "hidden_size", getattr(backbone, "dim", 0)))

    def _require_backbone(self) -> PretrainedConfig:
        if self.backbone_config is None:
            raise ValueError("MtpfConfig has no backbone_config: build it with MtpfConfig.from_backbone(...).")
        return self.backbone_config

    def validate_slot(self, task: str) -> None:
        """Fail early, naming the slot and field, on a slot that PEFT could not place on this backbone."""
        if task not in self.task_slots:
            raise KeyError(f"No adapter slot named {task!r}; this model has {sorted(self.task_slots)}.")
        slot = self.task_slots[task]
        missing = [field for field in REQUIRED_SLOT_FIELDS if field not in slot]
        if missing:
            raise ValueError(f"Adapter slot {task!r} is missing the field(s) {missing}.")
        expand_roles(slot["target_modules"])
        bad_layers = [layer for layer in slot["layers"] if not 0 <= int(layer) < self.num_layers]
        if bad_layers or not slot["layers"]:
            raise ValueError(
                f"Adapter slot {task!r} names layers {slot['layers']}, but the backbone has layers "
                f"0..{self.num_layers - 1}."
            )

    def slot_target_regex(self, task: str, prefix: str = "backbone") -> str:
        """The PEFT `target_modules` regex of a slot, valid inside MtpfModel and every head class wrapping it.

        PEFT full-matches the regex against module names; every Mtpf class names the backbone `backbone`,
        and an optional leading path also lets the adapter attach inside a model that wraps one.
        """
        self.validate_slot(task)
        slot = self.task_slots[task]
        layout = backbone_layout(self._require_backbone().model_type)
        modules = "|".join(re.escape(layout["modules"][role]) for role in expand_roles(slot["target_modules"]))
        layers = "|".join(str(int(layer)) for layer in slot["layers"])
        return rf"(.*\.)?{re.escape(prefix)}\.{re.escape(layout['layers'])}\.({layers})\.({modules})"
