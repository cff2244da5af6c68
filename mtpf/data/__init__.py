"""Data: CoNLL readers, text pairs, unlabeled corpora, samplers and per-step batches."""
