"""Pre-finetuning losses, one per module: InfoNCE (TC), its gradient-cached form, pseudo-label CE (NER)."""

from mtpf.losses.cached_info_nce import CachedInfoNCE
from mtpf.losses.info_nce import InfoNCELoss, gather_with_grad
from mtpf.losses.pseudo_label_ce import pseudo_label_cross_entropy

__all__ = ["CachedInfoNCE", "InfoNCELoss", "gather_with_grad", "pseudo_label_cross_entropy"]
