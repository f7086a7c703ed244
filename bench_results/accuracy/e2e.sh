#!/bin/bash
# The ACCURACY.md end-to-end row: MiniLM fine-tuned end to end (mean-pool head warm-started
# from the frozen run of accuracy.sh), one epoch of 2 sampled windows per document.
D=runs/kernel-docs; dir=runs/accuracy/e2e-mean-pool/seed0
start=$(date +%s)
.venv/bin/longdoc train --train $D/train --validation $D/validation --head mean-pool \
  --max-length 512 --overlap 128 --max-chunks 64 --overflow head_tail \
  --init-from runs/accuracy/mean-pool/seed0 --train-windows 2 --batch-size 8 --epochs 1 \
  --encoder-lr 3e-5 --lr 1e-3 --seed 0 --output $dir --no-progress > $dir.train.log 2>&1 || { echo FAIL; tail -5 $dir.train.log; exit 1; }
echo "$(date +%T) trained e2e ($(( $(date +%s) - start )) s)"
.venv/bin/longdoc evaluate --checkpoint $dir --data $D/test --output $dir/test --no-progress > $dir.eval.log 2>&1 || { echo FAIL eval; tail -5 $dir.eval.log; exit 1; }
echo "$(date +%T) e2e: $(tail -1 $dir.eval.log) ($(( $(date +%s) - start )) s in all)"
