#!/bin/bash
# The ACCURACY.md runs: frozen MiniLM, kernel-docs, 3 seeds. Usage: STAGE=train|eval bench_results/accuracy/accuracy.sh ROWS...  (from the repository root)
set -u
D=runs/kernel-docs; OUT=${OUT:-runs/accuracy}; STAGE=${STAGE:-all}; SEEDS=${SEEDS:-0 1 2}
CH="--max-length 512 --overlap 128 --max-chunks 64 --overflow head_tail"
COMMON="--train $D/train --validation $D/validation --freeze-encoder --epochs 60 --patience 10 --no-progress"
# linear heads (one linear layer over window vectors): lr 1e-2; the transformer head: 1e-3
LR="--lr 1e-2"
for row in "$@"; do
  for seed in $SEEDS; do
    dir=$OUT/$row/seed$seed; mkdir -p $OUT/$row
    LR="--lr 1e-2"
    case $row in
      truncation) args="--head mean-pool --max-length 512 --overlap 128 --max-chunks 1 --overflow head";;
      head-tail)  args="--head mean-pool --window head_tail $CH";;
      tfidf)      args="--baseline tfidf"; [ $seed -gt 0 ] && continue;;
      # the window x overlap sweep (mean-pool): sweep-W-O; the cap scales with the window
      # (64 windows of 512 tokens), so every row reads about the same span of a document
      sweep-*)    w=${row#sweep-}; o=${w#*-}; w=${w%-*}
                  args="--head mean-pool --max-length $w --overlap $o --max-chunks $(( 64 * 512 / w )) --overflow head_tail";;
      chunks-*)   k=${row#chunks-}; args="--head mean-pool --max-length 512 --overlap 128 --max-chunks $k --overflow head_tail";;
      transformer) args="--head transformer $CH"; LR="--lr 1e-3";;
      *)          args="--head $row $CH";;
    esac
    start=$(date +%s)
    if [ $STAGE != eval ] && [ ! -f $dir/training.json ]; then
      .venv/bin/longdoc train $COMMON $LR $args --seed $seed --output $dir > $dir.train.log 2>&1 || { echo "FAIL train $row $seed"; tail -3 $dir.train.log; continue; }
      echo "$(date +%H:%M:%S) trained $row seed $seed ($(( $(date +%s) - start )) s): $(grep -c epoch $dir.train.log) epochs"
    fi
    if [ $STAGE != train ] && [ ! -f $dir/test.json ]; then
      .venv/bin/longdoc evaluate --checkpoint $dir --data $D/test --output $dir/test.json --no-progress > $dir.eval.log 2>&1 || { echo "FAIL eval $row $seed"; tail -3 $dir.eval.log; continue; }
      echo "$(date +%H:%M:%S) $row seed $seed: $(tail -1 $dir.eval.log)"
    fi
  done
done
