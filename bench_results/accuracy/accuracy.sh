#!/bin/bash
# The ACCURACY.md runs: frozen MiniLM, kernel-docs, 3 seeds, `longdoc train`'s defaults (no
# optimisation flag: 60 epochs at most, patience 10, lr 1e-2 for the linear heads, 1e-3 for
# the transformer head, derived per regime and recorded in training.json).
# Usage: STAGE=train|eval|all bench_results/accuracy/accuracy.sh ROWS...  (from the repository root)
# Rows: truncation head-tail logits-mean logits-max mean-pool transformer attention
#       attention-per-label tfidf
#       mean-pool-noval (no --validation: a held-out 15% of train scores the epochs)
#       sweep-caps sweep-chunking (grids, run by `longdoc sweep --keep-trials`; each trial
#       is then evaluated on the test split like a row)
set -u
D=${D:-runs/kernel-docs}; OUT=${OUT:-runs/accuracy}; STAGE=${STAGE:-all}; SEEDS=${SEEDS:-0 1 2}
CH="--max-length 512 --overlap 128 --max-chunks 64 --overflow head_tail"
DATA="--train $D/train --validation $D/validation"

evaluate() {  # evaluate DIR: the test split, once
  local dir=$1
  if [ $STAGE != train ] && [ ! -f $dir/test/report.json ]; then
    .venv/bin/longdoc evaluate --checkpoint $dir --data $D/test --output $dir/test --no-progress > $dir.eval.log 2>&1 || { echo "FAIL eval $dir"; tail -3 $dir.eval.log; return; }
    echo "$(date +%H:%M:%S) $dir: $(tail -1 $dir.eval.log)"
  fi
}

sweep() {  # sweep NAME GRID...: one `longdoc sweep`, every trial kept and evaluated
  local name=$1; shift; local grids=()
  for g in "$@"; do grids+=(--grid "$g"); done
  mkdir -p $OUT/$name
  if [ $STAGE != eval ] && [ ! -f $OUT/$name/sweep.json ]; then
    .venv/bin/longdoc sweep $DATA "${grids[@]}" --seeds $SEEDS --keep-trials --no-progress \
      --output $OUT/$name > $OUT/$name.log 2>&1 || { echo "FAIL sweep $name"; tail -3 $OUT/$name.log; return; }
    echo "$(date +%H:%M:%S) swept $name"; cat $OUT/$name/sweep.txt
  fi
  for dir in $OUT/$name/trials/*/seed*; do evaluate $dir; done
}

for row in "$@"; do
  case $row in
    # how many windows the best head needs (cap K, both ends kept), one feature cache
    sweep-caps) sweep $row "max_length=512 overlap=128 max_chunks=1,2,4,8,64 head=mean-pool"; continue;;
    # window x overlap; the cap scales with the window (64 windows of 512 tokens), so every
    # point reads about the same span of a long document
    sweep-chunking) sweep $row "max_length=512 overlap=128,0 max_chunks=64 head=mean-pool" \
      "max_length=256 overlap=64 max_chunks=128 head=mean-pool" \
      "max_length=128 overlap=0 max_chunks=256 head=mean-pool"; continue;;
  esac
  for seed in $SEEDS; do
    dir=$OUT/$row/seed$seed; mkdir -p $OUT/$row
    data=$DATA
    case $row in
      truncation) args="--head mean-pool --max-length 512 --overlap 128 --max-chunks 1 --overflow head";;
      head-tail)  args="--head mean-pool --window head_tail $CH";;
      tfidf)      args="--baseline tfidf"; [ $seed -gt 0 ] && continue;;
      mean-pool-noval) args="--head mean-pool $CH"; data="--train $D/train";;
      attention-per-label) args="--head attention --per-label-attention $CH";;
      *)          args="--head $row $CH";;
    esac
    start=$(date +%s)
    if [ $STAGE != eval ] && [ ! -f $dir/training.json ]; then
      .venv/bin/longdoc train $data --freeze-encoder --no-progress $args --seed $seed --output $dir > $dir.train.log 2>&1 || { echo "FAIL train $row $seed"; tail -3 $dir.train.log; continue; }
      echo "$(date +%H:%M:%S) trained $row seed $seed ($(( $(date +%s) - start )) s): $(grep -c '^epoch' $dir.train.log) epochs"
    fi
    evaluate $dir
  done
done
