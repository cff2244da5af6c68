#!/usr/bin/env bash
# Fig. 3-style interference curves of short real runs (pf_ner, pf_tc, mtpf_tpl) on the demo setup:
# all-MiniLM-L6-v2, the offline teacher, the offline pairs; metrics on CoNLL-2003 test every 20 steps.
# Usage: bash scripts/interference_curves.sh [STEPS] [SENTENCES]   (writes results/interference-curves/)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false
steps=${1:-60}
sentences=${2:-100}
out=results/interference-curves
mkdir -p "$out"
if [ ! -f outputs/teacher-minilm-l6/teacher_info.json ]; then
  python -m mtpf build-teacher --output outputs/teacher-minilm-l6
fi
for mode in pf_ner pf_tc mtpf_tpl; do
  python train_mtpf.py configs/demo.yaml --mode "$mode" --max_steps "$steps" --analysis_steps 20 \
    --analysis_sentences "$sentences" --save_strategy no --report_to none \
    --output_dir "outputs/interference/$mode" --release_dir "outputs/interference/$mode/release"
  cp "outputs/interference/$mode/interference.json" "$out/$mode.json"
done
python -m mtpf analyze --output "$out" --curves "$out/pf_ner.json" "$out/pf_tc.json" "$out/mtpf_tpl.json"
