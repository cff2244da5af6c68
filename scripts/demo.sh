#!/usr/bin/env bash
# README's main job: build the offline NER teacher (once), then a real MTPF-TPL run (configs/demo.yaml) that ends
# in a Hub-ready release at outputs/demo-release/, then the repos it would publish, cards included (the backbone's
# reports the recipe's measured quality against the base), at outputs/demo-hub/. Re-running resumes from the last
# checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ ! -f outputs/teacher-minilm-l6/teacher_info.json ]; then
  python -m mtpf build-teacher --output outputs/teacher-minilm-l6
fi
python train_mtpf.py configs/demo.yaml --resume_from_checkpoint last "$@"
python push_to_hub.py outputs/demo-release --repo-id "${MTPF_DEMO_REPO:-mtpf/all-MiniLM-L6-v2-mtpf}" \
  --quality results/quality/summary.json --dry-run outputs/demo-hub
