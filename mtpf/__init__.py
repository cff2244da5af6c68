"""mtpf: Multi-Task Pre-Finetuning with Task-Primary LoRAs for lightweight BERT-like encoders."""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

from configuration_mtpf import MtpfConfig
from modeling_mtpf import MtpfForSequenceClassification, MtpfForTokenClassification, MtpfModel
from mtpf.errors import MtpfError

__version__ = "0.1.0"

# Installed-package route: Auto classes resolve "mtpf" without trust_remote_code.
AutoConfig.register("mtpf", MtpfConfig, exist_ok=True)
AutoModel.register(MtpfConfig, MtpfModel, exist_ok=True)
AutoModelForTokenClassification.register(MtpfConfig, MtpfForTokenClassification, exist_ok=True)
AutoModelForSequenceClassification.register(MtpfConfig, MtpfForSequenceClassification, exist_ok=True)

__all__ = [
    "MtpfConfig",
    "MtpfError",
    "MtpfForSequenceClassification",
    "MtpfForTokenClassification",
    "MtpfModel",
    "__version__",
]
