"""`longdoc bench`: throughput and latency of a running server, with baselines."""

from __future__ import annotations

import argparse

from longdoc.cli_options import (
    CommandFailed,
    UsageError,
    add_output_arg,
    add_server_args,
    config_from_args,
    deprecated_alias,
    server_kwargs,
)

DESCRIPTION = """\
Benchmark a running document_classifier (started with `longdoc serve`) over gRPC or HTTP.

Corpus: --docs real-text documents built from Python standard-library docstrings, lengths
drawn in tokens (88% log-normal, median 1,500 tokens; 12% uniform from 8,000 tokens up to
what max_chunks windows hold), deterministic for --seed. With --repository, the served
tokenizer and chunking (max_chunks included) give each document's windows and the
padded-token waste; without it, the default tokenizer and chunking.

Load: a closed-loop sweep over --concurrency (N documents in flight, each sent as soon as
the previous one returns), then an open loop at each --rate (Poisson arrivals, documents
per second; latency counts from the scheduled arrival). Each point: --warmup-s of warm-up,
then windows of --window-s (extended until --min-window-docs documents finish) until the
last --stable-windows windows agree on chunks/s within --stability, or --max-point-s.

Reported per point: documents/s, chunks/s, tokens/s, latency mean/p50/p90/p95/p99/max,
errors, and from Triton's statistics API over the same windows: per composing model
(chunker, encoder, aggregator) queue vs compute time per request, average batch, busy
fraction, and the encoder's batch-size histogram. For a server on this machine, the cores
used by the server's processes, by this process and by everything else (a point measured
while other processes ran is not clean: see --max-other-cores).

Mixed workload (--mixed R,R,...: fairness to short documents): --short-docs documents of
--short-windows windows arrive at R documents/s (Poisson, open loop) for --mixed-duration-s,
first alone, then while --long-inflight documents of --long-windows windows are kept in
flight (the same arrival sequence); short-document p50/p99 of both and their ratio (target:
p99 at most 2x) go to results.json ("mixed") and summary.md.

Baselines (--baselines, needs --repository): in-process onnxruntime over the same ONNX
files with the same chunking and batching (the ceiling for the server; and one document
at a time, for the latency the server adds at concurrency 1), and the naive loop (PyTorch
eager, one window at a time, every window padded to max_length; the model comes from
--checkpoint/--preset or the repository's export_report.json). Ratios: served saturated
tokens/s over each baseline's; decision agreement between served and baseline answers.
--reference-repository DIR adds agreement with another export (e.g. FP32 for INT8).

Output (--output DIR): results.json (everything), results.csv (one row per point and
baseline), latency_throughput.png (latency vs throughput), summary.md (the tables).
Progress goes to stderr; a run cut short leaves results.partial.json.
Exits 1 if any request failed (the errors are counted per point in the results).
"""

EPILOG = """examples:
  longdoc bench --url 127.0.0.1:8001 --repository model_repository --output bench_results/x
  longdoc bench --protocol http --url 127.0.0.1:8000 --concurrency 1,4,16 --rate 1,2
  longdoc bench --repository model_repository --concurrency '' --mixed 2 --long-windows 500
  longdoc bench --header admin-key:$KEY ...   # a server started with --restrict-api statistics
  longdoc bench --repository /tmp/int8 --baselines --reference-repository /tmp/fp32 \\
      --checkpoint ./minilm-cls --docs 64 --output bench_results/minilm_int8
"""


def _ints(value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {value!r}") from None
    if any(v < 1 for v in out):
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return out


def _floats(value: str) -> list[float]:
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {value!r}") from None
    if any(v <= 0 for v in out):
        raise argparse.ArgumentTypeError("rates must be > 0")
    return out


def _window_range(value: str) -> tuple[int, int]:
    lo, _, hi = value.partition("-")
    try:
        out = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI windows: {value!r}") from None
    if not 1 <= out[0] <= out[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI: {value!r}")
    return out


def _baselines(value: str) -> list[str]:
    out = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in out if v not in ("ort", "naive")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown baseline(s) {bad}: choose ort, naive")
    return out


PEERS = ("belt", "hf_pipeline", "optimum", "naive")  # longdoc.bench.peers.PEERS


def _peers(value: str) -> list[str]:
    out = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in out if v not in PEERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {bad}: choose {', '.join(PEERS)}")
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark a running server: concurrency sweep, open loop, baselines",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    add_server_args(p, timeout=600.0)
    deprecated_alias(p, "--request-timeout", "--timeout")
    p.add_argument(
        "--repository",
        metavar="DIR",
        help="the served model repository: its tokenizer/chunking (windows, waste) and ONNX "
        "files (baselines)",
    )
    c = p.add_argument_group("corpus")
    c.add_argument("--docs", type=int, default=64, help="documents (default: %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="corpus seed (default: %(default)s)")
    g = p.add_argument_group("load and measurement")
    g.add_argument(
        "--concurrency",
        type=_ints,
        default=[1, 2, 4, 8, 16, 32],
        metavar="N,N,...",
        help="closed-loop levels (default: 1,2,4,8,16,32; '' for none)",
    )
    g.add_argument(
        "--rate",
        type=_floats,
        default=[],
        metavar="R,R,...",
        help="open-loop Poisson arrival rates in documents/s (default: none)",
    )
    g.add_argument("--warmup-s", type=float, default=5.0, help="per point (default: %(default)s)")
    g.add_argument("--window-s", type=float, default=10.0, help="(default: %(default)s)")
    g.add_argument(
        "--min-window-docs",
        type=int,
        default=4,
        help="extend a window until this many documents finished in it (default: %(default)s)",
    )
    g.add_argument(
        "--stability",
        type=float,
        default=0.10,
        help="windows agree when within this fraction of their mean (default: %(default)s)",
    )
    g.add_argument("--stable-windows", type=int, default=3, help="(default: %(default)s)")
    g.add_argument(
        "--max-point-s",
        type=float,
        default=120.0,
        help="time limit per point; an unstable point reports all its windows "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--passes",
        type=int,
        default=0,
        metavar="K",
        help="fixed work instead of windows: each closed-loop point sends every corpus "
        "document K times (after a warm-up) and divides by the wall time: the same documents "
        "as the baselines, for A/B comparisons (default: 0, windows)",
    )
    g.add_argument(
        "--max-other-cores",
        type=float,
        default=None,
        metavar="C",
        help="shared machines: measure a point or baseline again (after waiting for a quiet "
        "machine) when other processes used more than C cores during it (default: off; "
        "every point records the cores used by the server, this process and others)",
    )
    g.add_argument(
        "--remeasure",
        type=int,
        default=2,
        metavar="N",
        help="with --max-other-cores: measure again at most N times",
    )
    m = p.add_argument_group("mixed workload (fairness to short documents)")
    m.add_argument(
        "--mixed",
        type=_floats,
        default=[],
        metavar="R,R,...",
        help="short-document arrival rates (documents/s) of the mixed workload (default: none)",
    )
    m.add_argument(
        "--short-windows",
        type=_window_range,
        default=(1, 4),
        metavar="LO-HI",
        help="windows per short document (default: 1-4)",
    )
    m.add_argument("--short-docs", type=int, default=32, help="(default: %(default)s)")
    m.add_argument(
        "--long-windows",
        type=int,
        default=300,
        metavar="N",
        help="windows per long document (default: %(default)s)",
    )
    m.add_argument(
        "--long-inflight",
        type=int,
        default=1,
        metavar="K",
        help="long documents kept in flight (default: %(default)s)",
    )
    m.add_argument(
        "--mixed-duration-s",
        type=float,
        default=30.0,
        help="seconds of short arrivals per phase (default: %(default)s)",
    )
    b = p.add_argument_group("baselines (same process, same documents)")
    b.add_argument(
        "--baselines",
        nargs="?",
        const="ort,naive",
        type=_baselines,
        default=[],
        metavar="ort,naive",
        help="run baselines (default when given: ort,naive)",
    )
    b.add_argument(
        "--baseline-time-limit",
        type=float,
        default=300.0,
        help="seconds per baseline (default: %(default)s)",
    )
    b.add_argument(
        "--ort-threads",
        type=int,
        default=None,
        help="in-process onnxruntime threads (default: all cores, like the server's default)",
    )
    b.add_argument(
        "--ort-max-batch",
        type=int,
        default=None,
        metavar="N",
        help="in-process onnxruntime: windows per call (default: the encoder's max_batch_size)",
    )
    src = b.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="DIR", help="PyTorch model of the naive baseline")
    src.add_argument("--preset", help="preset architecture of the naive baseline")
    b.add_argument("--head", help="pooling head of the naive model (default: the repository's)")
    b.add_argument("--random-head", action="store_true", default=None, help="seeded head")
    b.add_argument(
        "--reference-repository",
        metavar="DIR",
        help="another export whose decisions the served ones are compared with",
    )
    x = p.add_argument_group("the machine's ceiling and peer libraries (need --repository)")
    x.add_argument(
        "--ceiling",
        action="store_true",
        help="measure onnxruntime's FP32 and INT8 matrix-multiply rates at the encoder's "
        "shapes and report the served throughput as a fraction of that ceiling",
    )
    x.add_argument(
        "--peers",
        nargs="?",
        const=",".join(PEERS),
        type=_peers,
        default=[],
        metavar=",".join(PEERS),
        help="run peer systems on the same documents and weights, each in its own process "
        "(default when given: all; time limit --baseline-time-limit each)",
    )
    o = p.add_argument_group("output")
    add_output_arg(o, "results.json, results.csv and the plot", required=False)
    o.add_argument("--label", default="", help="name of this run in the results and plot")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--quiet", action="store_true", help="nothing on stderr")
    o.add_argument(
        "--render",
        metavar="DIR",
        help="run nothing: rewrite DIR's results.csv, plot and summary.md from its results.json",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from longdoc.bench.config import BenchConfig
    from longdoc.bench.run import run_bench

    if args.render:
        from longdoc.bench.report import render

        render(args.render)
        return 0
    for flag, wanted in (
        ("--baselines", args.baselines),
        ("--ceiling", args.ceiling),
        ("--peers", args.peers),
    ):
        if wanted and not args.repository:
            raise UsageError(f"{flag} needs --repository DIR")
    if not args.concurrency and not args.rate and not args.mixed:
        raise UsageError("no load points (--concurrency / --rate / --mixed)")
    if args.long_windows < 1 or args.long_inflight < 1 or args.short_docs < 1:
        raise UsageError("--long-windows, --long-inflight and --short-docs must be >= 1")
    server = server_kwargs(args)
    cfg = config_from_args(
        BenchConfig,
        args,
        url=server["url"],
        headers=server["headers"],
        request_timeout_s=args.timeout,
        rates=args.rate,
        baseline_time_limit_s=args.baseline_time_limit,
        mixed_rates=args.mixed,
        output=str(args.output) if args.output else None,
        progress=not (args.no_progress or args.quiet),
    )
    try:
        result = run_bench(cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    except (RuntimeError, ConnectionError) as exc:
        raise CommandFailed(str(exc)) from None
    if not args.output:
        import json

        keys = ("saturated", "corpus", "mixed")
        print(json.dumps({k: result[k] for k in keys if k in result}, indent=2, default=str))
    failed = sum(p["errors"] for p in result["points"])
    for m in result.get("mixed", []):
        failed += m["short_only"]["errors"] + m["mixed"]["errors"] + m["mixed"]["long"]["errors"]
    return 1 if failed else 0
