"""What a user would run instead of this server, on the same documents and weights.

Each peer runs in its own process (so that its memory is its own and its thread settings
do not leak into the others), one document at a time (so its latency per document is its
concurrency-1 latency), over the corpus of the run, with the PyTorch model the served
repository was exported from (``baselines.load_reference_model``):

* ``belt``: ``belt-nlp`` 1.1.0 ("BERT for longer texts", the public library for this job):
  stride chunking, every chunk padded to 512, the chunks of a document in one PyTorch
  forward, mean (or max) pooling of chunk logits. Same window (``chunk_size`` = the
  window's body, ``max_length - 2``), same overlap (``stride`` = body - overlap,
  ``minimal_chunk_length`` = overlap + 1, which drops the tail chunks belt would add inside
  the previous window): its windows are ours, so with the ``logits-mean``/``logits-max``
  heads (belt's mean/max pooling) its decisions must agree with the server's. Its network
  is our encoder module (belt's own ``BertNN`` reads ``[CLS]`` into a fixed 768-wide
  linear layer without BERT's pooler: a different model), its token ids 101/102 are
  checked against the tokenizer.
* ``hf_pipeline``: Hugging Face ``pipeline("text-classification", truncation=True)``:
  the first 512 tokens only (what a user does without long-document support).
* ``optimum``: optimum's ``ORTModelForSequenceClassification`` (onnxruntime, exported by
  optimum from the same weights; the export is not timed) over the first 512 tokens.
* ``naive``: the benchmark's naive loop (``baselines.naive``: PyTorch eager, one window at a
  time, every window padded to ``max_length``).

Rates: documents/s; ``tokens_per_s`` counts the documents' tokens (the served figure's
unit, whatever the peer read of them); ``read_tokens_per_s`` counts the document tokens the
peer actually read (all of them for belt and naive, at most ``max_length - 2`` per document
for the truncating peers); ``read_fraction`` is the share of the corpus they read. What
reading only the first 512 tokens costs in accuracy is measured in ACCURACY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEERS = ("belt", "hf_pipeline", "optimum", "naive")
TRUNCATING = ("hf_pipeline", "optimum")


def hf_tokenizer(tokenizer_path: str | Path, max_length: int):
    """A transformers fast tokenizer over the repository's ``tokenizer.json`` (its own
    truncation/padding settings off: the callers ask for what they want)."""
    from transformers import PreTrainedTokenizerFast

    from longdoc.chunking import load_tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=load_tokenizer(tokenizer_path),
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def _classifier(model):
    """The ``BertForSequenceClassification`` inside a logits-head LoadedModel."""
    if model.head not in ("logits-mean", "logits-max"):
        raise ValueError(f"head {model.head!r}: the peers need a classifier (logits-mean/max)")
    return model.encoder.bert


# ---------------------------------------------------------------------------------------
# the peers, each a function (model, texts) -> (labels, latencies, read tokens, notes)
# ---------------------------------------------------------------------------------------


def _timed(classify, texts: list[str], time_limit_s: float) -> tuple[list[int], list[float]]:
    classify(texts[0])  # warm-up
    labels, latencies = [], []
    started = time.perf_counter()
    for text in texts:
        if time.perf_counter() - started >= time_limit_s:
            break
        t0 = time.perf_counter()
        labels.append(int(classify(text)))
        latencies.append(time.perf_counter() - t0)
    return labels, latencies


def run_belt(model, texts: list[str], time_limit_s: float) -> dict:
    import torch
    from belt_nlp.bert_classifier_with_pooling import BertClassifierWithPooling

    cfg = model.chunking
    tok = hf_tokenizer(model.tokenizer_path, cfg.max_length)
    if (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) != (101, 102, 0):
        ids = f"{tok.cls_token_id}/{tok.sep_token_id}/{tok.pad_token_id}"
        raise ValueError(f"belt-nlp hard-codes [CLS]/[SEP]/[PAD] = 101/102/0; here {ids}")
    if cfg.max_length != 512:
        raise ValueError("belt-nlp pads every chunk to 512: max_length must be 512")
    body = cfg.body_length
    belt = BertClassifierWithPooling(
        num_labels=model.num_labels,
        batch_size=1,
        learning_rate=0.0,
        epochs=0,
        chunk_size=body,
        stride=body - cfg.overlap,
        minimal_chunk_length=cfg.overlap + 1,
        pooling_strategy="max" if model.head == "logits-max" else "mean",
        tokenizer=tok,
        neural_network=model.encoder,
        pretrained_model_name_or_path=None,
        device="cpu",
    )
    with torch.inference_mode():
        labels, lat = _timed(lambda t: belt.predict([t])[0], texts, time_limit_s)
    return {
        "labels": labels,
        "latencies": lat,
        "description": (
            f"belt-nlp BertClassifierWithPooling (chunk_size {body}, stride {body - cfg.overlap}, "
            f"minimal_chunk_length {cfg.overlap + 1}, {belt.pooling_strategy} pooling, one "
            f"document per predict call), PyTorch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        ),
    }


def run_hf_pipeline(model, texts: list[str], time_limit_s: float) -> dict:
    import torch
    from transformers import pipeline

    bert = _classifier(model)
    tok = hf_tokenizer(model.tokenizer_path, model.chunking.max_length)
    pipe = pipeline("text-classification", model=bert, tokenizer=tok, device=-1)
    label2id = {v: k for k, v in bert.config.id2label.items()}
    max_length = model.chunking.max_length

    def classify(text: str) -> int:
        out = pipe(text, truncation=True, max_length=max_length)
        return int(label2id[out[0]["label"]])

    with torch.inference_mode():
        labels, lat = _timed(classify, texts, time_limit_s)
    return {
        "labels": labels,
        "latencies": lat,
        "description": (
            f"transformers pipeline('text-classification', truncation=True, max_length="
            f"{max_length}), PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
        ),
    }


def run_optimum(model, texts: list[str], time_limit_s: float) -> dict:
    import optimum.onnxruntime as oort
    import torch

    bert = _classifier(model)
    max_length = model.chunking.max_length
    tok = hf_tokenizer(model.tokenizer_path, max_length)
    with tempfile.TemporaryDirectory(prefix="optimum_") as tmp:
        bert.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        t0 = time.perf_counter()
        ort_model = oort.ORTModelForSequenceClassification.from_pretrained(tmp, export=True)
        export_s = time.perf_counter() - t0

        def classify(text: str) -> int:
            inputs = tok(text, truncation=True, max_length=max_length, return_tensors="np")
            if "token_type_ids" not in ort_model.input_names:
                inputs.pop("token_type_ids", None)
            logits = ort_model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits
            return int(np.argmax(logits.detach().numpy()[0]))

        labels, lat = _timed(classify, texts, time_limit_s)
    import onnxruntime

    return {
        "labels": labels,
        "latencies": lat,
        "export_s": export_s,
        "description": (
            f"optimum ORTModelForSequenceClassification.from_pretrained(export=True) (export "
            f"{export_s:.0f} s, not timed), first {max_length} tokens, onnxruntime "
            f"{onnxruntime.__version__} CPU"
        ),
    }


def run_naive(model, texts: list[str], time_limit_s: float) -> dict:
    from longdoc.bench import baselines

    docs = [_Doc(0, 0)] * len(texts)  # rates are computed by the caller
    out = baselines.naive(model, texts, docs, time_limit_s)
    labels = [out["labels"][i] for i in sorted(out["labels"])]
    return {
        "labels": labels,
        "latencies": None,
        "latency_ms": out["latency_ms"],
        "seconds_total": out["seconds"],
        "description": out["description"],
    }


class _Doc:
    def __init__(self, num_chunks: int, num_tokens: int) -> None:
        self.num_chunks, self.num_tokens = num_chunks, num_tokens


RUNNERS = {
    "belt": run_belt,
    "hf_pipeline": run_hf_pipeline,
    "optimum": run_optimum,
    "naive": run_naive,
}


# ---------------------------------------------------------------------------------------
# one peer in its own process
# ---------------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> dict:
    """What the child process does: load the model, run the peer, report."""
    import torch
    from longdoc.bench.baselines import load_reference_model
    from longdoc.bench.stats import latency_summary

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.texts).read_text())
    model = load_reference_model(args.repository, args.checkpoint, args.preset, args.head)
    rss_loaded = _rss_mb()
    out = RUNNERS[args.peer](model, texts, args.time_limit_s)
    lat = out.pop("latencies")
    if lat is not None:
        out["latency_ms"] = latency_summary(lat)
        out["seconds_total"] = float(sum(lat))
    out |= {"peer": args.peer, "rss_after_load_mb": rss_loaded, "peak_rss_mb": _rss_mb()}
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_peer(
    peer: str,
    repository: str | Path,
    texts: list[str],
    docs,
    time_limit_s: float = 300.0,
    checkpoint: str | None = None,
    preset: str | None = None,
    head: str | None = None,
    threads: int | None = None,
    timeout_s: float | None = None,
) -> dict:
    """One peer over ``texts`` (whose BenchDoc ``docs`` give tokens and windows) in a child
    process; its rates, latency, peak memory and decisions (by document index)."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}: choose from {', '.join(PEERS)}")
    with tempfile.TemporaryDirectory(prefix="peers_") as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        out_file = Path(tmp) / "out.json"
        cmd = [
            sys.executable,
            "-m",
            "longdoc.bench.peers",
            "--peer",
            peer,
            "--repository",
            str(repository),
            "--texts",
            str(texts_file),
            "--time-limit-s",
            str(time_limit_s),
            "--out",
            str(out_file),
        ]
        for flag, value in (
            ("--checkpoint", checkpoint),
            ("--preset", preset),
            ("--head", head),
            ("--threads", threads),
        ):
            if value:
                cmd += [flag, str(value)]
        env = dict(
            os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
        )
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s or time_limit_s * 2 + 600,
        )
        if proc.returncode != 0 or not out_file.is_file():
            return {"peer": peer, "error": (proc.stderr or proc.stdout).strip()[-1500:]}
        out = json.loads(out_file.read_text())
    out["process_s"] = time.perf_counter() - t0
    return out | rates(peer, out, docs)


def rates(peer: str, out: dict, docs) -> dict:
    """Throughput over the documents the peer finished, in the served figures' units."""
    done = docs[: len(out["labels"])]
    seconds = out["seconds_total"]
    tokens = sum(d.num_tokens for d in done)
    read = _read_tokens(peer, done)
    return {
        "docs": len(done),
        "complete": len(done) == len(docs),
        "seconds": seconds,
        "tokens": tokens,
        "read_tokens": read,
        "read_fraction": read / tokens if tokens else None,
        "docs_per_s": len(done) / seconds if seconds else 0.0,
        "chunks_per_s": sum(d.num_chunks for d in done) / seconds if seconds else 0.0,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "read_tokens_per_s": read / seconds if seconds else 0.0,
    }


def _read_tokens(peer: str, docs, body: int = 510) -> int:
    if peer in TRUNCATING:
        return sum(min(d.num_tokens, body) for d in docs)
    return sum(d.num_tokens for d in docs)


def run_peers(
    repository: str | Path,
    texts: list[str],
    docs,
    peers: tuple[str, ...] = PEERS,
    time_limit_s: float = 300.0,
    checkpoint: str | None = None,
    preset: str | None = None,
    head: str | None = None,
    threads: int | None = None,
    log=print,
    served_labels: dict[int, int] | None = None,
    served_url: str | None = None,
) -> dict:
    """Every peer in turn, then decisions against the server's and the server's memory."""
    out: dict = {"loadavg_start": list(os.getloadavg()), "peers": {}}
    for peer in peers:
        log(f"peer {peer}: {len(texts)} documents, one at a time, own process...")
        result = run_peer(
            peer, repository, texts, docs, time_limit_s, checkpoint, preset, head, threads
        )
        if "error" in result:
            log(f"peer {peer} failed: {result['error'][-300:]}")
        else:
            log(
                f"peer {peer}: {result['docs']} docs in {result['seconds']:.1f} s, "
                f"{result['tokens_per_s']:,.0f} tokens/s, peak {result['peak_rss_mb']:.0f} MB"
            )
            if served_labels:
                labels = dict(enumerate(result["labels"]))
                common = sorted(set(labels) & set(served_labels))
                same = sum(labels[i] == served_labels[i] for i in common)
                result["agreement_with_served"] = {
                    "docs": len(common),
                    "agree": same,
                    "rate": same / len(common) if common else None,
                }
        out["peers"][peer] = result
    if served_url:
        out["server_rss_mb"] = server_rss_mb(served_url)
    out["loadavg_end"] = list(os.getloadavg())
    return out


def server_rss_mb(url: str) -> float | None:
    """Resident memory of the server's process tree now (tritonserver and its stubs)."""
    try:
        from longdoc.bench.measurement import server_pid, server_processes

        pid = server_pid(url)
        if pid is None:
            return None
        return sum(p.memory_info().rss for p in server_processes(pid)) / 2**20
    except Exception:  # best effort: no psutil, no permission
        return None


def served_summary(bench: dict) -> dict | None:
    """The served figures the peers table sets them against: saturated docs/s and tokens/s
    (the best closed-loop point) and the p50 latency at concurrency 1."""
    best = bench.get("saturated")
    if not best:
        return None
    c1 = [p for p in bench.get("points", []) if p["mode"] == "closed" and p["concurrency"] == 1]
    return best | {
        "docs": bench.get("corpus", {}).get("docs"),
        "p50_c1_ms": c1[0]["latency_ms"].get("p50") if c1 else None,
    }


def peers_table(result: dict) -> list[str]:
    """summary.md section: served (saturated and concurrency 1) next to every peer."""
    served = result.get("served")
    lines = [
        "Peers on the same documents and weights, each in its own process, one document at a "
        "time (load average "
        f"{result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end). "
        "tokens/s counts the documents' tokens; read: the tokens the peer actually read "
        "(truncating peers read the first 510; what that costs: ACCURACY.md).",
        "",
        "| system | docs | docs/s | tokens/s | read tokens/s | read | p50 ms (c=1) | memory MB "
        "| decisions = served |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if served:
        lines.append(
            f"| served (saturated; p50 at c=1) | {served.get('docs', '-')} | "
            f"{served['docs_per_s']:.2f} | {served['tokens_per_s']:,.0f} | "
            f"{served['tokens_per_s']:,.0f} | 100% | {_fmt(served.get('p50_c1_ms'), '.0f')} | "
            f"{_fmt(result.get('server_rss_mb'), '.0f')} (server RSS) | - |"
        )
    for name, p in result["peers"].items():
        if "error" in p:
            lines.append(f"| {name} | failed: {p['error'].splitlines()[-1][:120]} |||||||")
            continue
        agree = p.get("agreement_with_served") or {}
        lines.append(
            f"| {name} | {p['docs']}{'' if p['complete'] else ' (time limit)'} | "
            f"{p['docs_per_s']:.2f} | {p['tokens_per_s']:,.0f} | {p['read_tokens_per_s']:,.0f} | "
            f"{p['read_fraction']:.0%} | {_fmt(p['latency_ms'].get('p50'), '.0f')} | "
            f"{p['peak_rss_mb']:.0f} (peak) | "
            + (f"{agree['agree']}/{agree['docs']} |" if agree else "- |")
        )
    if served:
        for name, p in result["peers"].items():
            if p.get("tokens_per_s"):
                lines.append(
                    f"- served over {name} (tokens/s): "
                    f"{served['tokens_per_s'] / p['tokens_per_s']:.2f}x"
                )
    lines += [
        f"- {name}: {p['description']}" for name, p in result["peers"].items() if "description" in p
    ]
    return lines


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m longdoc.bench.peers", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--repository", required=True)
    p.add_argument(
        "--peer",
        choices=PEERS,
        action="append",
        help="repeatable (default: all); with --texts: run this one peer here",
    )
    p.add_argument("--texts", help=argparse.SUPPRESS)  # child mode: a JSON list of texts
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit-s", type=float, default=300.0)
    p.add_argument("--checkpoint")
    p.add_argument("--preset")
    p.add_argument("--head")
    p.add_argument("--threads", type=int)
    p.add_argument("--output", help="write the JSON here")
    args = p.parse_args(argv)
    if args.texts:  # child
        args.peer = args.peer[0]
        result = child(args)
        Path(args.out).write_text(json.dumps(result))
        return 0
    from longdoc.bench.workload import build_corpus, load_chunking

    tokenizer, chunking = load_chunking(args.repository)
    docs = build_corpus(args.docs, args.seed, tokenizer, chunking)
    result = run_peers(
        args.repository,
        [d.text for d in docs],
        docs,
        tuple(args.peer or PEERS),
        args.time_limit_s,
        args.checkpoint,
        args.preset,
        args.head,
        args.threads,
        log=lambda m: print(m, file=sys.stderr),
    )
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(peers_table(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
