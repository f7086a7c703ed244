#!/usr/bin/env bash
# The runs behind BENCHMARKS.md's "Ceiling and peers" section, back to back on one machine.
# Repositories: R=/tmp/ce (see BENCHMARKS.md for the export commands).
set -u
cd "$(dirname "$0")/../.."
R=${R:-/tmp/ce}
OUT=bench_results/ceiling_peers
B=.venv/bin
serve() {  # repo -> starts a server on 18501 (HTTP) / 18502 (gRPC)
  $B/longdoc serve --repository "$1" --http-port 18501 --grpc-port 18502 --metrics-port 0 \
    > "$OUT/serve_$2.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 300); do curl -fs 127.0.0.1:18501/v2/health/ready && return 0; sleep 1; done
  return 1
}
stop() { kill -TERM "$SERVER"; wait "$SERVER" 2>/dev/null; sleep 3; }
run() {  # name repo bench-args...
  local name=$1 repo=$2; shift 2
  echo "== $name $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/runs.log"
  serve "$repo" "$name" || { echo "server for $name did not start" | tee -a "$OUT/runs.log"; stop; return; }
  $B/longdoc bench --url 127.0.0.1:18502 --repository "$repo" --passes 1 --warmup-s 3 \
    --no-progress --output "$OUT/$name" --label "$name" "$@" 2> "$OUT/$name.stderr"
  echo "   rc $? end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/runs.log"
  stop
}
ONLY=${ONLY:-large_fp32 large_int8 minilm_fp32 minilm_int8 base_fp32 base_int8}
for n in $ONLY; do case $n in
  minilm_fp32) run minilm_fp32 $R/minilm_fp32 --docs 16 --concurrency 1 --ceiling \
      --peers belt,hf_pipeline,optimum,naive --baseline-time-limit 90 --checkpoint $R/minilm-cls ;;
  minilm_int8) run minilm_int8 $R/minilm_int8 --docs 16 --concurrency 1 --ceiling \
      --reference-repository $R/minilm_fp32 --checkpoint $R/minilm-cls ;;
  base_fp32) run base_fp32 $R/base_fp32 --docs 6 --seed 1 --concurrency 1 \
      --peers belt --baseline-time-limit 120 --preset bert-base-uncased ;;
  base_int8) run base_int8 $R/base_int8 --docs 6 --seed 1 --concurrency 1 \
      --peers belt --baseline-time-limit 120 --preset bert-base-uncased \
      --reference-repository $R/base_fp32 ;;
  large_fp32) run large_fp32 $R/large_fp32 --docs 6 --seed 1 --concurrency 1 --ceiling ;;
  large_int8) run large_int8 $R/large_int8 --docs 6 --seed 1 --concurrency 1 --ceiling \
      --reference-repository $R/large_fp32 ;;
esac; done
