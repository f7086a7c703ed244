"""What `longdoc bench` sends: the corpus, as the served chunking cuts it.

* ``build_corpus``: the benchmark corpus (``longdoc.corpus.benchmark_corpus``: real text,
  lengths in tokens from a documented distribution, deterministic for a seed), no document
  over ``max_chunks`` windows, each with its tokens, windows and padded-token waste;
* ``corpus_summary`` / ``waste_whatif``: the length distribution, and the padding waste
  under other strategies and bucket sets;
* ``short_corpus`` / ``long_documents``: the mixed workload's two populations (short
  documents of 1-4 windows, long ones of a given number of windows).

The bottom of the package with ``stats`` and ``config``: imports neither the server nor
the other bench modules.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from longdoc.bench.stats import percentile

from longdoc import contract


@dataclass
class BenchDoc:
    """One corpus document as sent, with what the served chunking makes of it."""

    index: int
    data: bytes
    num_tokens: int  # document tokens (no [CLS]/[SEP])
    num_chunks: int
    seq_len: int  # padded window length (bucket)
    needed_tokens: int  # tokens in the windows (incl. [CLS]/[SEP]), no padding
    computed_tokens: int  # num_chunks x seq_len: what the encoder computes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


def load_chunking(repository: str | None):
    """Tokenizer and chunking of the served repository (defaults without one)."""
    from longdoc.checkpoint import default_tokenizer_dir
    from longdoc.chunking import ChunkingConfig, load_tokenizer

    if repository:
        here = Path(repository) / contract.CHUNKER / "1"
        tokenizer = load_tokenizer(here / contract.TOKENIZER_FILE)
        return tokenizer, ChunkingConfig.load(here / contract.CHUNKING_FILE)
    return load_tokenizer(default_tokenizer_dir()), ChunkingConfig()


def prepare_corpus(texts: list[str], tokenizer, chunking) -> list[BenchDoc]:
    from longdoc.chunking import chunk_text

    docs = []
    for index, text in enumerate(texts):
        chunks = chunk_text(text, tokenizer, chunking)
        docs.append(
            BenchDoc(
                index,
                text.encode("utf-8"),
                chunks.num_tokens,
                chunks.num_chunks,
                chunks.seq_len,
                int(chunks.attention_mask.sum()),
                chunks.input_ids.size,
            )
        )
    return docs


def build_corpus(n_docs: int, seed: int, tokenizer, chunking) -> list[BenchDoc]:
    """The benchmark corpus for a chunking: no document exceeds ``max_chunks`` windows."""
    from longdoc import corpus

    max_tokens = corpus.max_tokens_for(chunking.max_chunks, chunking.max_length, chunking.overlap)
    texts = corpus.benchmark_corpus(n_docs, seed, tokenizer, max_tokens)
    return prepare_corpus(texts, tokenizer, chunking)


CHUNK_BINS = ((1, 1), (2, 4), (5, 10), (11, 20), (21, 40), (41, 64), (65, 10**9))


def padding_waste(docs: list[BenchDoc]) -> dict:
    """Tokens the encoder computes over tokens the windows need (configured overlap
    included), minus one: the share of compute spent on padding."""
    needed = sum(d.needed_tokens for d in docs)
    computed = sum(d.computed_tokens for d in docs)
    return {
        "tokens_needed": needed,
        "tokens_computed": computed,
        "waste": computed / needed - 1 if needed else None,
    }


WHATIF_BUCKETS = (
    (512,),
    (128, 256, 384, 512),
    tuple(range(64, 513, 64)),
    tuple(range(32, 513, 32)),
)


def waste_whatif(docs: list[BenchDoc], chunking) -> list[dict]:
    """Padding waste of the same documents under other strategies and bucket sets (same
    max_length and overlap), with the number of distinct window lengths each produces
    (every distinct length is a separate batch queue in Triton's dynamic batcher). Planned
    from the token counts with the chunking module's own window plan: no re-tokenizing."""
    from dataclasses import replace

    from longdoc.chunking import plan_windows

    out = []
    for strategy in ("fixed", "balanced"):
        for buckets in WHATIF_BUCKETS:
            buckets = tuple(b for b in buckets if b <= chunking.max_length)
            cfg = replace(chunking, strategy=strategy, seq_buckets=buckets)
            needed = computed = 0
            lengths = set()
            for doc in docs:
                ranges, seq_len, _ = plan_windows(doc.num_tokens, cfg)
                needed += sum(end - start + 2 for start, end in ranges)
                computed += len(ranges) * seq_len
                lengths.add(seq_len)
            out.append(
                {
                    "strategy": strategy,
                    "seq_buckets": list(cfg.seq_buckets),
                    "waste": computed / needed - 1,
                    "tokens_computed": computed,
                    "distinct_seq_lens": len(lengths),
                    "served": cfg == chunking,
                }
            )
    return out


def corpus_summary(docs: list[BenchDoc]) -> dict:
    """The length distribution in tokens and windows, and the padding waste."""
    tokens = [d.num_tokens for d in docs]
    chunks = [d.num_chunks for d in docs]
    total_chunks = sum(chunks)
    bins = {}
    for lo, hi in CHUNK_BINS:
        inside = [c for c in chunks if lo <= c <= hi]
        if lo > 64 and not inside:
            continue
        name = str(lo) if lo == hi else (f"{lo}-{hi}" if hi < 10**9 else f">={lo}")
        bins[name] = {
            "docs": len(inside),
            "share_docs": len(inside) / len(docs) if docs else 0,
            "share_chunks": sum(inside) / total_chunks if total_chunks else 0,
        }
    seq = {}
    for d in docs:
        seq[str(d.seq_len)] = seq.get(str(d.seq_len), 0) + 1
    return {
        "docs": len(docs),
        "tokens": sum(tokens),
        "chunks": total_chunks,
        "bytes": sum(len(d.data) for d in docs),
        "tokens_percentiles": {f"p{q}": percentile(tokens, q) for q in (0, 10, 50, 90, 100)},
        "chunks_percentiles": {f"p{q}": percentile(chunks, q) for q in (0, 10, 50, 90, 100)},
        "mean_chunks": total_chunks / len(docs) if docs else 0,
        "chunk_bins": bins,
        "docs_per_seq_len": dict(sorted(seq.items(), key=lambda kv: int(kv[0]))),
        **padding_waste(docs),
    }


# ---------------------------------------------------------------------------------------
# the mixed workload's two populations
# ---------------------------------------------------------------------------------------


def doc_from_text(index: int, text: str, tokenizer, chunking) -> BenchDoc:
    """A BenchDoc from the window plan alone (no ``max_chunks`` check: long documents may
    be longer than today's served limit; the server says so if it refuses them)."""
    from longdoc.chunking import plan_windows

    num_tokens = len(tokenizer.encode(text, add_special_tokens=False).ids)
    unlimited = replace(chunking, max_chunks=max(chunking.max_chunks, 10**9))
    ranges, seq_len, _ = plan_windows(num_tokens, unlimited)
    needed = sum(end - start + 2 for start, end in ranges)
    return BenchDoc(
        index,
        text.encode("utf-8"),
        num_tokens,
        len(ranges),
        seq_len,
        needed,
        len(ranges) * seq_len,
    )


def _text_of(tokens: int, seed: int, tokenizer) -> str:
    from longdoc import corpus

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return corpus.trim_to_tokens(
        corpus.document(tokens, seed=seed, count_tokens=count), tokens, tokenizer
    )


def short_corpus(
    n_docs: int, seed: int, tokenizer, chunking, windows: tuple[int, int] = (1, 4)
) -> list[BenchDoc]:
    """``n_docs`` real-text documents of ``windows[0]..windows[1]`` windows each (windows
    drawn uniformly, then tokens uniformly within what that many windows hold)."""
    from longdoc import corpus

    lo, hi = windows
    if not 1 <= lo <= hi:
        raise ValueError(f"short windows must be 1 <= lo <= hi (got {windows})")
    rng = random.Random(seed * 31 + 17)
    docs = []
    for k in range(n_docs):
        w = rng.randint(lo, hi)
        low = (
            corpus.max_tokens_for(w - 1, chunking.max_length, chunking.overlap) + 1 if w > 1 else 8
        )
        high = corpus.max_tokens_for(w, chunking.max_length, chunking.overlap)
        text = _text_of(rng.randint(low, high), seed * 100_003 + 50_000 + k, tokenizer)
        docs.append(doc_from_text(k, text, tokenizer, chunking))
    return docs


def long_documents(n_docs: int, windows: int, seed: int, tokenizer, chunking) -> list[BenchDoc]:
    """``n_docs`` distinct real-text documents of exactly ``windows`` windows each (as many
    tokens as that many windows hold)."""
    from longdoc import corpus

    tokens = corpus.max_tokens_for(windows, chunking.max_length, chunking.overlap)
    return [
        doc_from_text(
            k, _text_of(tokens, seed * 100_003 + 90_000 + k, tokenizer), tokenizer, chunking
        )
        for k in range(n_docs)
    ]
