#!/usr/bin/env bash
# `longdoc batch` against `longdoc classify` on the same server(s) and documents, then the
# in-process engine. Usage: bench_results/batch/run.sh REPOSITORY [DOCS]
# Starts two servers on free ports, writes docs.jsonl, prints one line per run.
# SERVER_CPUS / CLIENT_CPUS (taskset lists, e.g. 0 and 1): pin the servers and the clients
# (classify, the batch driver and Ray with its workers) apart, so that the comparison is of
# what each client path gets out of a server, not of how much CPU it takes from it.
set -euo pipefail
SRV=(); CLI=()
[ -n "${SERVER_CPUS:-}" ] && SRV=(taskset -c "$SERVER_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && CLI=(taskset -c "$CLIENT_CPUS")
REPO=${1:?model repository}
DOCS=${2:-300}
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'kill ${S1:-} ${S2:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$PY" - "$WORK/docs.jsonl" "$DOCS" <<'PYEOF'
import json, sys
from longdoc import corpus
lengths = corpus.corpus_lengths(int(sys.argv[2]), seed=7, max_words=10_000)
with open(sys.argv[1], "w") as f:
    for i, n in enumerate(lengths):
        f.write(json.dumps({"id": f"d{i}", "text": corpus.document(n, seed=7000 + i)}) + "\n")
PYEOF
read -r H1 G1 M1 H2 G2 M2 < <("$PY" -c "from longdoc.server.probe import free_ports; print(*free_ports(6))")
"${SRV[@]}" "$PY" -m longdoc.cli serve --repository "$REPO" --http-port "$H1" --grpc-port "$G1" --metrics-port "$M1" >"$WORK/s1.log" 2>&1 & S1=$!
"${SRV[@]}" "$PY" -m longdoc.cli serve --repository "$REPO" --http-port "$H2" --grpc-port "$G2" --metrics-port "$M2" >"$WORK/s2.log" 2>&1 & S2=$!
until curl -fs "127.0.0.1:$H1/v2/health/ready" && curl -fs "127.0.0.1:$H2/v2/health/ready"; do sleep 2; done
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
rate() {  # label, seconds, jsonl-or-dir
  "$PY" - "$@" <<'PYEOF'
import json, sys, pathlib
label, seconds, where = sys.argv[1], float(sys.argv[2]), pathlib.Path(sys.argv[3])
if where.is_dir():
    import pyarrow.parquet as pq
    rows = pq.read_table(where).to_pylist()
else:
    rows = [json.loads(l) for l in where.open()]
windows = sum(r.get("num_chunks") or 0 for r in rows)
print(f"{label}: {len(rows)} docs, {windows} windows, {seconds:.1f} s wall: "
      f"{len(rows)/seconds:.2f} docs/s, {windows/seconds:.1f} windows/s")
PYEOF
}
# warm both servers (first requests load the stubs' caches)
"$PY" -m longdoc.cli classify "$WORK/docs.jsonl" --url "127.0.0.1:$G1" --no-progress >/dev/null 2>&1 || true
"$PY" -m longdoc.cli classify "$WORK/docs.jsonl" --url "127.0.0.1:$G2" --no-progress >/dev/null 2>&1 || true
t0=$(date +%s.%N)
"${CLI[@]}" "$PY" -m longdoc.cli classify "$WORK/docs.jsonl" --url "127.0.0.1:$G1" --concurrency 8 --no-progress >"$WORK/classify.jsonl"
rate "classify, 1 server, concurrency 8" "$(echo "$(date +%s.%N) - $t0" | bc)" "$WORK/classify.jsonl"
for run in "1:--url 127.0.0.1:$G1" "2:--url 127.0.0.1:$G1 --url 127.0.0.1:$G2" "local:--repository $REPO --num-cpus 2"; do
  name=${run%%:*}; flags=${run#*:}
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  "${CLI[@]}" "$PY" -m longdoc.cli batch "$WORK/docs.jsonl" $flags --output "$WORK/out-$name" --no-progress 2>"$WORK/batch-$name.log" || true
  rate "batch $name (wall, Ray start included)" "$(echo "$(date +%s.%N) - $t0" | bc)" "$WORK/out-$name"
  grep "classified" "$WORK/batch-$name.log" | sed "s/^/  batch $name own count: /"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
