#!/usr/bin/env bash
# How long the first queued row waits for company (`mtpf serve --max_wait_ms` 5, 1, 0) on the PyTorch and ONNX Runtime
# backends, one text per request, 4 locust clients, 2 rounds interleaved; prints round, server-wait, mean ms, requests/s.
# usage: bash bench/serve_wait.sh RELEASE SHARED_EXPORT   (the servers of bench/serve_locust.py; bench/RESULTS.md section 12)
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
W=$(mktemp -d)
R=${1:?usage: serve_wait.sh RELEASE SHARED_EXPORT}; X=${2:?usage: serve_wait.sh RELEASE SHARED_EXPORT}
declare -A PORT
i=0
for w in 5 1 0; do
  for b in onnx torch; do
    p=$((18600+i)); i=$((i+1)); PORT[$b-$w]=$p
    if [ $b = onnx ]; then extra="--backend onnx --onnx $X"; else extra=""; fi
    python -m mtpf serve $R --port $p --apps_state none --max_wait_ms $w $extra > $W/wait-$b-$w.log 2>&1 &
  done
done
for k in "${!PORT[@]}"; do until curl -s -o /dev/null -X POST localhost:${PORT[$k]}/v1/embeddings -H 'content-type: application/json' -d '{"model":"base","input":["hi"]}'; do sleep 1; done; done
python - <<'PY' > $W/texts.txt
import json
from pathlib import Path
for l in Path("../shared/data/tc/banking77/test.jsonl").read_text().split("\n")[:512]:
    if l.strip(): print(json.loads(l)["text"])
PY
for round in 1 2; do
  for k in onnx-5 onnx-1 onnx-0 torch-5 torch-1 torch-0; do
    BENCH_MODEL=base BENCH_TEXTS=1 BENCH_TEXTS_FILE=$W/texts.txt locust -f bench/load/locustfile.py --headless --only-summary -u 4 -r 4 -t 12s --host http://127.0.0.1:${PORT[$k]} --csv $W/w-$k --loglevel ERROR >/dev/null 2>&1
    echo "$round $k $(grep Aggregated $W/w-${k}_stats.csv | cut -d, -f10,6)"
  done
done
pkill -f "apps_state none --max_wait_ms"
