"""`longdoc bench`: load generation and measurement against a running `document_classifier`.

What one run does (``run.run_bench``):

1. builds the benchmark corpus (``workload``: real text, lengths in tokens from a documented
   distribution, deterministic for a seed) and chunks every document with the served
   chunking (tokens, windows, padded-token waste);
2. for every load point (``drivers``), a closed loop (``concurrency`` documents in flight,
   each worker sends the next document as soon as its previous one returns) or an open loop
   (Poisson arrivals at ``rate`` documents/s, latency counted from the scheduled arrival, so
   a slow server cannot hide its queue: no coordinated omission): a warm-up, then
   measurement windows until the last ``stable_windows`` windows agree on chunks/s within
   ``stability`` (perf_analyzer's rule) or the point's time limit passes;
3. per point: documents/s, chunks/s, tokens/s, latency mean/p50/p90/p95/p99/max, errors,
   and the server side from Triton's statistics API over the same windows
   (``measurement``): per composing model queue vs compute time per request, executions,
   average batch, busy fraction and the encoder's batch-size histogram; the cores used by
   the server, this process and everything else;
4. the mixed workload (``drivers.measure_mixed``): short documents arriving at a fixed rate,
   alone and while long documents are in flight; short-document p50/p99 in both;
5. optionally the baselines in the same process (``baselines``): in-process onnxruntime
   over the same ONNX files, and the naive PyTorch loop; ratios and decision agreement;
6. writes ``results.json``, ``results.csv``, ``summary.md`` and ``latency_throughput.png``
   (``report``).

Throughput counts finished documents: a document's chunks and tokens count in the window
in which its answer arrives. Chunks/s is the stability metric because documents differ in
size by 100x; windows are extended until at least ``min_window_docs`` documents finish.

Modules, each importing only those above it (one direction)::

    stats, config        pure numbers; the run's configuration
    workload             the corpus as the served chunking cuts it
    measurement          Triton statistics, serving facts, CPU/machine, the server's processes
    drivers              closed-loop, open-loop, fixed-work and mixed load (over
                         longdoc.client.transport, shared with the client library)
    baselines            in-process onnxruntime and PyTorch on the same documents
    report               tables, JSON, CSV, plot (and the sections further measurements add)
    run                  one whole run
    cli                  `longdoc bench`

This file imports nothing: ``import longdoc.bench`` stays light. The benchmark sits beside
``longdoc.client``, not inside it: its baselines import onnxruntime and torch, which a
client-only install (``longdoc[client]``) does not have; it uses the client's transport, the
client never imports the benchmark.
"""
