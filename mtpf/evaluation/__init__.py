"""Downstream evaluation (paper Sec. 3, appendices A, C, D): NER readers and LoRA protocol, MTEB text
classification on local data, the `smoke`/`quick`/`paper` suites and paper-style tables (`mtpf-eval`)."""
