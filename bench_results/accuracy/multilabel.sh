#!/bin/bash
# The ACCURACY.md multi-label runs: kernel-maintainers (kernel documentation labelled by the
# MAINTAINERS entries that cover each file), frozen MiniLM, 3 seeds, `longdoc train`'s
# defaults (no optimisation flag), decision thresholds chosen on the validation split.
# Usage: STAGE=train|eval|all bench_results/accuracy/multilabel.sh ROWS...  (repository root)
# Rows: truncation logits-mean logits-max mean-pool transformer attention attention-per-label tfidf
#       HEAD-per-label-thresholds (HEAD with --thresholds per-label)
set -u
D=${D:-runs/kernel-maintainers}; OUT=${OUT:-runs/accuracy-multilabel}; STAGE=${STAGE:-all}
SEEDS=${SEEDS:-0 1 2}
CH="--max-length 512 --overlap 128 --max-chunks 64 --overflow head_tail"
DATA="--train $D/train.jsonl --validation $D/validation.jsonl"

for row in "$@"; do
  for seed in $SEEDS; do
    dir=$OUT/$row/seed$seed; mkdir -p $OUT/$row
    case $row in
      truncation) args="--head mean-pool --max-length 512 --overlap 128 --max-chunks 1 --overflow head";;
      attention-per-label) args="--head attention --per-label-attention $CH";;
      *-per-label-thresholds) args="--head ${row%-per-label-thresholds} --thresholds per-label $CH";;
      tfidf) args="--baseline tfidf"; [ $seed -gt 0 ] && continue;;
      *) args="--head $row $CH";;
    esac
    start=$(date +%s)
    if [ $STAGE != eval ] && [ ! -f $dir/training.json ]; then
      .venv/bin/longdoc train $DATA --freeze-encoder --no-progress $args --seed $seed --output $dir > $dir.train.log 2>&1 || { echo "FAIL train $row $seed"; tail -3 $dir.train.log; continue; }
      echo "$(date +%H:%M:%S) trained $row seed $seed ($(( $(date +%s) - start )) s)"
    fi
    if [ $STAGE != train ] && [ ! -f $dir/test/report.json ]; then
      .venv/bin/longdoc evaluate --checkpoint $dir --data $D/test.jsonl --output $dir/test --no-progress > $dir.eval.log 2>&1 || { echo "FAIL eval $dir"; tail -3 $dir.eval.log; continue; }
      echo "$(date +%H:%M:%S) $dir: $(tail -1 $dir.eval.log)"
    fi
  done
done
