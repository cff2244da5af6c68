"""Downstream evaluation: NER datasets (and, to come, the NER LoRA protocol and MTEB text classification)."""
