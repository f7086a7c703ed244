"""encode_batch against one encode per document, same documents (README "Long documents").

Run twice: TOKENIZERS_PARALLELISM=true and =false (the stubs' setting)
    .venv/bin/python bench_results/mixed_workload/encode_batch_ab.py
"""

import os
import statistics
import time

from longdoc import corpus
from longdoc.checkpoint import minilm_dir
from longdoc.chunking import load_tokenizer


def median_ms(fn, repeats: int = 30) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    tok = load_tokenizer(minilm_dir())
    for words, n in ((300, 8), (1500, 8), (300, 2)):
        docs = [corpus.document(words, seed=i) for i in range(n)]

        def one_by_one(docs=docs):
            return [tok.encode(d, add_special_tokens=False) for d in docs]

        def batched(docs=docs):
            return tok.encode_batch(docs, add_special_tokens=False)

        assert [e.ids for e in one_by_one()] == [e.ids for e in batched()]
        seq, bat = median_ms(one_by_one), median_ms(batched)
        seq, bat = min(seq, median_ms(one_by_one)), min(bat, median_ms(batched))
        tokens = len(tok.encode(docs[0], add_special_tokens=False).ids)
        print(
            f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM')}: {n} docs of "
            f"~{tokens} tokens: one by one {seq:.2f} ms, encode_batch {bat:.2f} ms"
        )


if __name__ == "__main__":
    main()
