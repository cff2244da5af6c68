"""MTPF models: one shared BERT-like backbone, task-primary LoRA slots attached with PEFT, and task heads.

Self-contained remote-code file (torch/transformers, peft only inside `load_task_adapters`), so
`AutoModel.from_pretrained(folder, trust_remote_code=True)` works without the mtpf package.

Ladder: MtpfPreTrainedModel -> MtpfModel (token + sentence embeddings) -> MtpfLinearHeadModel (MtpfModel plus a
linear classifier, same module names) -> MtpfForTokenClassification / MtpfForSequenceClassification.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

try:  # relative when loaded as remote code or from a package, absolute when installed as a top-level module
    from .configuration_mtpf import MtpfConfig
except ImportError:
    from configuration_mtpf import MtpfConfig

AUTO_MAP = {
    "AutoConfig": "configuration_mtpf.MtpfConfig",
    "AutoModel": "modeling_mtpf.MtpfModel",
    "AutoModelForTokenClassification": "modeling_mtpf.MtpfForTokenClassification",
    "AutoModelForSequenceClassification": "modeling_mtpf.MtpfForSequenceClassification",
}
PEFT_PREFIX = "base_model.model."


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token embeddings that the attention mask keeps (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class MtpfPreTrainedModel(PreTrainedModel):
    config_class = MtpfConfig
    base_model_prefix = "mtpf"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: MtpfConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.config.auto_map = dict(AUTO_MAP)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = getattr(self.config.backbone_config, "initializer_range", 0.02)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load safetensors weights only (never pickle), naming the folder when the file is unreadable."""
        kwargs.setdefault("use_safetensors", True)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as err:
            raise OSError(
                f"Could not read the weights in {pretrained_model_name_or_path}: the safetensors file is "
                f"corrupted ({err})."
            ) from err


class MtpfModel(MtpfPreTrainedModel):
    """The shared encoder: token embeddings plus a pooled sentence embedding (`pooler_output`)."""

    def __init__(self, config: MtpfConfig) -> None:
        super().__init__(config)
        self._build_backbone(config)
        self.post_init()

    def _build_backbone(self, config: MtpfConfig) -> None:
        if config.backbone_config is None:
            raise ValueError("MtpfConfig has no backbone_config: build it with MtpfConfig.from_backbone(...).")
        self.backbone = AutoModel.from_config(config.backbone_config)
        self._backbone_takes_token_types = "token_type_ids" in inspect.signature(self.backbone.forward).parameters

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def pool(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            return token_embeddings[:, 0]
        return mean_pool(token_embeddings, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        backbone_inputs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "inputs_embeds": inputs_embeds,
            "output_hidden_states": output_hidden_states,
            "output_attentions": output_attentions,
        }
        if token_type_ids is not None and self._backbone_takes_token_types:
            backbone_inputs["token_type_ids"] = token_type_ids
        outputs = self.backbone(**backbone_inputs, return_dict=True)
        tokens = outputs.last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=self.pool(tokens, attention_mask),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # ----- task-primary adapter slots -----------------------------------------------------------------

    def adapter_source(self, task: str) -> str:
        """Where slot `task`'s trained adapter lives: a Hub repo id, or a folder (relative to this model's)."""
        self.config.validate_slot(task)
        source = self.config.task_slots[task].get("adapter")
        if not source:
            raise ValueError(
                f"Adapter slot {task!r} records no trained adapter (config.task_slots[{task!r}]['adapter'])."
            )
        base_dir = str(self.config._name_or_path or "")
        if os.path.isdir(base_dir) and not os.path.isabs(source):
            candidate = os.path.normpath(os.path.join(base_dir, source))
            if os.path.isdir(candidate):
                return candidate
        return source

    def check_adapter_weights(self, adapter_dir: str) -> None:
        """Raise a clear error, naming the file, when an adapter folder was made for another backbone."""
        weights = os.path.join(adapter_dir, "adapter_model.safetensors")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{weights}: adapter weights not found (expected a PEFT adapter folder).")
        modules = dict(self.named_modules())
        try:
            with safe_open(weights, framework="pt") as handle:
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        except SafetensorError as err:
            raise OSError(f"{weights}: corrupted safetensors file ({err}).") from err
        for key, shape in shapes.items():
            name = key.removeprefix(PEFT_PREFIX)
            for marker in (".lora_A.", ".lora_B."):
                if marker not in name:
                    continue
                module_name = name.split(marker)[0]
                target = modules.get(module_name)
                if target is None:
                    raise ValueError(
                        f"{weights}: tensor {key!r} targets module {module_name!r}, which this "
                        f"{self.config.backbone_config.model_type} backbone with {self.config.num_layers} layers "
                        "does not have (adapter made for another backbone?)."
                    )
                expected = target.in_features if marker == ".lora_A." else target.out_features
                actual = shape[1] if marker == ".lora_A." else shape[0]
                if actual != expected:
                    raise ValueError(
                        f"{weights}: tensor {key!r} has size {actual} where module {module_name!r} needs {expected} "
                        "(adapter made for a backbone of another hidden size?)."
                    )

    def load_task_adapters(self, tasks: list[str] | None = None, is_trainable: bool = False, **kwargs: Any):
        """Attach the trained slots recorded in the config as named PEFT adapters; the first one is active.

        Returns a `peft.PeftModel`; switch tasks with `set_adapter(task)`.
        """
        from peft import PeftModel

        tasks = list(tasks or self.config.task_slots)
        peft_model = None
        for task in tasks:
            source = self.adapter_source(task)
            if os.path.isdir(source):
                self.check_adapter_weights(source)
                _check_adapter_config(source)
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(
                    self, source, adapter_name=task, is_trainable=is_trainable, **kwargs
                )
            else:
                peft_model.load_adapter(source, adapter_name=task, is_trainable=is_trainable, **kwargs)
        if peft_model is None:
            raise ValueError("This MtpfConfig declares no adapter slots to load.")
        peft_model.set_adapter(tasks[0])
        return peft_model


def _check_adapter_config(adapter_dir: str) -> None:
    path = os.path.join(adapter_dir, "adapter_config.json")
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable PEFT adapter config ({err}).") from err
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {config.get('peft_type')!r}, expected 'LORA'.")


class MtpfLinearHeadModel(MtpfModel):
    """An MtpfModel plus dropout and a linear classifier; subclasses choose what it reads and the loss.

    It extends MtpfModel rather than wrapping it, so the backbone keeps the same module names
    (`backbone.…`) in every class: a PEFT adapter saved from one loads into all of them.
    """

    def __init__(self, config: MtpfConfig) -> None:
        MtpfPreTrainedModel.__init__(self, config)
        self._build_backbone(config)
        self.num_labels = config.num_labels
        self.dropout = nn.Dropout(_dropout_of(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def encode(self, input_ids, attention_mask, token_type_ids, **kwargs: Any) -> BaseModelOutputWithPooling:
        return MtpfModel.forward(
            self, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs
        )

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))


class MtpfForTokenClassification(MtpfLinearHeadModel):
    """Linear token head (NER); labels on first sub-tokens, -100 elsewhere."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput:
        outputs = self.encode(input_ids, attention_mask, token_type_ids, **kwargs)
        logits = self.classify(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), ignore_index=-100)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class MtpfForSequenceClassification(MtpfLinearHeadModel):
    """Linear head on the pooled sentence embedding (text classification; one label = regression)."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        outputs = self.encode(input_ids, attention_mask, token_type_ids, **kwargs)
        logits = self.classify(outputs.pooler_output)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels.view(-1))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def _dropout_of(config: MtpfConfig) -> float:
    backbone = config.backbone_config
    for name in ("classifier_dropout", "hidden_dropout_prob", "dropout"):
        value = getattr(backbone, name, None)
        if value is not None:
            return float(value)
    return 0.1


MtpfConfig.register_for_auto_class()
MtpfModel.register_for_auto_class("AutoModel")
MtpfForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
MtpfForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
