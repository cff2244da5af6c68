"""Task-primary LoRA slots as named PEFT adapters on a trainable shared backbone.

PEFT's default is "frozen base, one trainable adapter". MTPF-TPL needs the opposite: every slot stays in the
optimizer, only the active slot is in the forward graph (so only its task's loss reaches it), and the backbone
keeps training under both tasks. These helpers restore that after each `set_adapter`.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from configuration_mtpf import MtpfConfig
from mtpf.fused_lora import use_fused_linear

LORA_MARKER = "lora_"


def lora_config_for_slot(config: MtpfConfig, task: str, modules_to_save: list[str] | None = None) -> LoraConfig:
    """The PEFT LoraConfig of one slot, targeting only the slot's layers and modules (plus, for an app, its head
    as `modules_to_save`, so the adapter folder carries it)."""
    slot = config.task_slots[task]
    return LoraConfig(
        r=int(slot["r"]),
        lora_alpha=int(slot["lora_alpha"]),
        lora_dropout=float(slot.get("lora_dropout", 0.0)),
        target_modules=config.slot_target_regex(task),
        bias="none",
        modules_to_save=modules_to_save,
    )


def attach_slots(
    model: nn.Module, tasks: list[str] | None = None, train_backbone: bool = True, fused: bool = False
) -> PeftModel:
    """Wrap an MtpfModel with one LoRA adapter per slot; the first task is active.

    `fused` (used only with a trainable backbone) builds the slots' linears as `FusedLoraLinear`: the same
    function and gradients for less work in training (`mtpf/fused_lora.py`).
    """
    config: MtpfConfig = model.config
    tasks = list(tasks or config.task_slots)
    if not tasks:
        raise ValueError("No adapter slots to attach: the config declares none and no tasks were given.")

    def slot_config(task: str) -> LoraConfig:
        lora_config = lora_config_for_slot(config, task)
        return use_fused_linear(lora_config) if fused and train_backbone else lora_config

    peft_model = get_peft_model(model, slot_config(tasks[0]), adapter_name=tasks[0])
    for task in tasks[1:]:
        peft_model.add_adapter(task, slot_config(task))
    activate_slot(peft_model, tasks[0], train_backbone=train_backbone)
    return peft_model


def activate_slot(peft_model: PeftModel, task: str | None, train_backbone: bool = True) -> None:
    """Route the forward pass through `task`'s slot (None: no slot) while keeping every slot trainable.

    Inactive slots get no gradient because they are not in the graph, not because they are frozen; the
    optimizer keeps holding them and `zero_grad(set_to_none=True)` leaves them untouched.
    """
    if task is None:
        peft_model.base_model.disable_adapter_layers()
    else:
        peft_model.base_model.enable_adapter_layers()
        peft_model.base_model.set_adapter(task)
    set_trainable(peft_model, train_backbone=train_backbone)


def set_trainable(peft_model: PeftModel, train_backbone: bool = True) -> None:
    """Every slot trainable; the backbone trainable unless this is frozen-backbone LoRA (PF-L)."""
    for name, param in peft_model.named_parameters():
        param.requires_grad = train_backbone or LORA_MARKER in name


def slot_parameters(peft_model: nn.Module, task: str) -> dict[str, nn.Parameter]:
    """The LoRA parameters that belong to one slot."""
    return {name: p for name, p in peft_model.named_parameters() if LORA_MARKER in name and f".{task}." in name}


def backbone_parameters(peft_model: nn.Module) -> dict[str, nn.Parameter]:
    """The shared (non-LoRA) parameters."""
    return {name: p for name, p in peft_model.named_parameters() if LORA_MARKER not in name}
