"""The PyTorch halves of the model: a per-chunk encoder and a pooling head across chunks.

Served as two ONNX graphs (the `encoder` and `aggregator` Triton models):

* ``ChunkEncoder``: ``input_ids, attention_mask [N, S] -> chunk vectors [N, D]``; chunk logits
  (D = labels) for the ``logits-*`` heads, masked mean of the last hidden states (D = hidden)
  for ``mean-pool`` and ``transformer``.
* an aggregator: ``vectors [B, C, D], chunk_mask [B, C] -> logits [B, L], chunk_logits
  [B, C, L]``. The document's logits are the mean (max for ``logits-max``, the attention
  weighted sum for ``attention``) of its valid chunk logits, so a user can see which
  passage drove the decision; ``window_weights`` gives each window's weight in each
  label's score (served as ``CHUNK_WEIGHTS``).

Padding never changes a result: padded tokens are excluded from the token mean, padded
chunks from the chunk mean/max, from the transformer's attention and from the attention
head's softmax.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from longdoc.contract import HEADS, LOGIT_HEADS  # noqa: F401  (re-exported)
from longdoc.decision import Decision


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of ``states [B, T, H]`` where ``mask [B, T]`` is 1."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    total = (states * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1.0)
    return total / count


class ChunkEncoder(nn.Module):
    """BERT over one batch of windows -> one vector per window."""

    def __init__(self, bert: nn.Module, pooling: str) -> None:
        super().__init__()
        if pooling not in ("logits", "mean"):
            raise ValueError(f"pooling must be 'logits' or 'mean' (got {pooling!r})")
        self.bert = bert
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        token_type_ids = torch.zeros_like(input_ids)
        out = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        if self.pooling == "logits":
            return out.logits
        return masked_mean(out.last_hidden_state, attention_mask)


class LogitsPool(nn.Module):
    """Chunk logits come from the encoder; the document takes their mean or max."""

    def __init__(self, reduce: str) -> None:
        super().__init__()
        if reduce not in ("mean", "max"):
            raise ValueError(f"reduce must be 'mean' or 'max' (got {reduce!r})")
        self.reduce = reduce

    def forward(self, vectors: torch.Tensor, chunk_mask: torch.Tensor):
        chunk_logits = vectors
        if self.reduce == "mean":
            return masked_mean(chunk_logits, chunk_mask), chunk_logits
        fill = torch.finfo(chunk_logits.dtype).min
        masked = chunk_logits.masked_fill(chunk_mask.unsqueeze(-1) == 0, fill)
        return masked.max(dim=1).values, chunk_logits


class MeanPoolHead(nn.Module):
    """Mean of chunk embeddings, then a linear classifier (= mean of per-chunk logits)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, vectors: torch.Tensor, chunk_mask: torch.Tensor):
        chunk_logits = self.classifier(self.dropout(vectors))
        return masked_mean(chunk_logits, chunk_mask), chunk_logits


class ChunkTransformerLayer(nn.Module):
    """A post-norm transformer encoder layer, written out so ONNX export sees plain ops
    (``nn.TransformerEncoderLayer`` takes a fused fast path in eval mode)."""

    def __init__(self, d_model: int, num_heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"hidden size {d_model} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Linear(ffn, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
        b, c, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(b, c, 3, h, d // h).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)  # [B, h, C, C]
        pad = (chunk_mask == 0).view(b, 1, 1, c)
        scores = scores.masked_fill(pad, torch.finfo(scores.dtype).min)
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, c, d)
        x = self.norm1(x + self.dropout(self.out(attended)))
        return self.norm2(x + self.dropout(self.ffn(x)))


POSITION_INIT_STD = 0.02


class TransformerHead(nn.Module):
    """Chunk embeddings + chunk-position embeddings -> small transformer (padding masked)
    -> per-chunk logits; the document's logits are their masked mean."""

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        layers: int = 2,
        num_heads: int = 4,
        ffn: int | None = None,
        max_positions: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.position = nn.Embedding(max_positions, hidden_size)
        # BERT's initializer range, not nn.Embedding's N(0, 1): window vectors of a frozen
        # sentence encoder have per-dimension spreads of a few hundredths, and unit-variance
        # positions drown them (measured: the head then stays at the class prior).
        nn.init.normal_(self.position.weight, std=POSITION_INIT_STD)
        self.layers = nn.ModuleList(
            ChunkTransformerLayer(hidden_size, num_heads, ffn or 2 * hidden_size, dropout)
            for _ in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, vectors: torch.Tensor, chunk_mask: torch.Tensor):
        """Documents of up to ``max_positions`` windows: one sequence, positions 0..C-1.
        Longer ones: consecutive segments of ``max_positions`` windows (the last one may be
        shorter), each read on its own with positions 0..P-1 exactly as a document of that
        many windows would be; the document's logits are the mean over all its windows.
        So every window sees positions the head was trained on, and the attention cost is
        O(C x P), not O(C^2) (a 1-million-token document has ~2,600 windows).

        Written with tensor ops only (segment count and padding from the chunk count), so
        the ONNX aggregator traced from it follows the same rule for every length."""
        b, d = vectors.shape[0], vectors.shape[2]
        count = torch.ones_like(chunk_mask[0]).sum()  # C, as a tensor: dynamic in ONNX
        seg = torch.clamp(count, max=self.max_positions)  # window slots per segment
        segments = torch.div(count + seg - 1, seg, rounding_mode="floor")
        slots = torch.arange(segments * seg, device=vectors.device)
        real = slots < count  # slots past C are padding of the last segment
        index = torch.clamp(slots, max=count - 1)
        x = vectors.index_select(1, index)
        mask = chunk_mask.index_select(1, index) * real.to(chunk_mask.dtype).unsqueeze(0)
        x = x.reshape(-1, seg, d)  # [B * segments, seg, D]
        mask = mask.reshape(-1, seg)
        x = x + self.position(torch.arange(seg, device=vectors.device)).unsqueeze(0)
        for layer in self.layers:
            x = layer(x, mask)
        chunk_logits = self.classifier(self.dropout(x))
        chunk_logits = chunk_logits.reshape(b, -1, chunk_logits.shape[-1])
        chunk_logits = chunk_logits.index_select(1, torch.arange(count, device=vectors.device))
        return masked_mean(chunk_logits, chunk_mask), chunk_logits


class AttentionHead(nn.Module):
    """Gated attention pooling over window vectors (Ilse et al. 2018, attention-based deep
    multiple-instance learning): each window gets a score ``w . (tanh(V h) * sigmoid(U h))``,
    a softmax over the document's windows (padding masked) makes them weights, and the
    document's logits are the weighted sum of the windows' logits ``W h + b`` (= ``W`` of
    the weighted mean of the window vectors, plus ``b``). ``per_label``: one attention per
    label (each label picks its own evidence, as in per-class attention over chunk
    embeddings), else one shared by all labels. No positions: any number of windows."""

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        attention_size: int = 128,
        per_label: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.per_label = per_label
        self.value = nn.Linear(hidden_size, attention_size)
        self.gate = nn.Linear(hidden_size, attention_size)
        self.score = nn.Linear(attention_size, num_labels if per_label else 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def attention(self, vectors: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
        """``[B, C, K]`` weights (K = labels, or 1 when shared); padded windows get 0."""
        hidden = torch.tanh(self.value(vectors)) * torch.sigmoid(self.gate(vectors))
        scores = self.score(self.dropout(hidden))
        pad = (chunk_mask == 0).unsqueeze(-1)
        scores = scores.masked_fill(pad, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=1).masked_fill(pad, 0.0)

    def forward(self, vectors: torch.Tensor, chunk_mask: torch.Tensor):
        chunk_logits = self.classifier(self.dropout(vectors))
        weights = self.attention(vectors, chunk_mask)
        return (weights * chunk_logits).sum(dim=1), chunk_logits


def window_weights(
    aggregator: nn.Module, vectors: torch.Tensor, chunk_mask: torch.Tensor, chunk_logits
) -> torch.Tensor:
    """``[B, C, L]``: each window's weight in each label's document score. The attention
    head's learned weights; the max's window for ``logits-max`` (ties share); ``1/n`` over
    the document's windows for the mean heads (``transformer`` included: its document
    logits are the mean of its contextual window logits). Padded windows weigh 0."""
    mask = chunk_mask.to(chunk_logits.dtype).unsqueeze(-1)  # [B, C, 1]
    if isinstance(aggregator, AttentionHead):
        # broadcast by a product, not expand_as: the exported graph keeps L a fixed dim
        return aggregator.attention(vectors, chunk_mask) * torch.ones_like(chunk_logits)
    if isinstance(aggregator, LogitsPool) and aggregator.reduce == "max":
        fill = torch.finfo(chunk_logits.dtype).min
        masked = chunk_logits.masked_fill(mask == 0, fill)
        top = (masked == masked.max(dim=1, keepdim=True).values).to(chunk_logits.dtype) * mask
        return top / top.sum(dim=1, keepdim=True).clamp(min=1.0)
    return (mask / mask.sum(dim=1, keepdim=True).clamp(min=1.0)) * torch.ones_like(chunk_logits)


def make_aggregator(head: str, hidden_size: int, num_labels: int, **options) -> nn.Module:
    """The aggregator module for a head name (options: transformer or attention sizes)."""
    if head == "logits-mean":
        return LogitsPool("mean")
    if head == "logits-max":
        return LogitsPool("max")
    if head == "mean-pool":
        return MeanPoolHead(hidden_size, num_labels)
    if head == "transformer":
        return TransformerHead(hidden_size, num_labels, **options)
    if head == "attention":
        return AttentionHead(hidden_size, num_labels, **options)
    raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")


class LogitsHead(nn.Module):
    """The trainable part of a ``logits-*`` head over frozen window vectors: the classifier
    layer of a ``BertForSequenceClassification`` (dropout, then linear on the pooled
    ``[CLS]``) followed by the mean or max over chunks. Training it on cached vectors and
    copying ``classifier`` into the checkpoint gives the model that export serves."""

    def __init__(self, hidden_size: int, num_labels: int, head: str, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.pool = make_aggregator(head, 0, num_labels)

    def forward(self, vectors: torch.Tensor, chunk_mask: torch.Tensor):
        return self.pool(self.classifier(self.dropout(vectors)), chunk_mask)


def pad_batch(vectors: list[torch.Tensor], device: str | torch.device = "cpu"):
    """Stack ``[n_i, D]`` chunk vectors into an aggregator's input: ``[B, C, D]`` (zeros
    past each document's windows) and the ``[B, C]`` chunk mask that hides them."""
    width = max(v.shape[0] for v in vectors)
    dim = vectors[0].shape[1]
    out = torch.zeros((len(vectors), width, dim), dtype=vectors[0].dtype, device=device)
    mask = torch.zeros((len(vectors), width), dtype=torch.int64, device=device)
    for i, v in enumerate(vectors):
        out[i, : v.shape[0]] = v
        mask[i, : v.shape[0]] = 1
    return out, mask


class SingleDocumentAggregator(nn.Module):
    """The served form of an aggregator: one document's ``[C, D]`` chunk vectors in,
    ``LOGITS [L]``, ``PROBABILITIES [L]``, ``CHUNK_LOGITS [C, L]``, ``CHUNK_WEIGHTS [C, L]``
    and ``DECISIONS [L]`` (bool) out: the decision rule (``longdoc.decision``) with its
    thresholds is part of the graph, so every server answer carries the label set."""

    def __init__(self, aggregator: nn.Module, decision: Decision | None = None) -> None:
        super().__init__()
        self.aggregator = aggregator
        self.multi_label = decision is not None and decision.multi_label
        thresholds = decision.thresholds if self.multi_label else ()
        self.register_buffer("thresholds", torch.tensor(thresholds, dtype=torch.float32))

    def forward(self, chunk_vectors: torch.Tensor):
        vectors = chunk_vectors.unsqueeze(0)
        mask = torch.ones(vectors.shape[:2], dtype=torch.int64, device=vectors.device)
        logits, chunk_logits = self.aggregator(vectors, mask)
        weights = window_weights(self.aggregator, vectors, mask, chunk_logits)
        logits = logits[0]
        if self.multi_label:
            probabilities = torch.sigmoid(logits)
            decisions = probabilities >= self.thresholds
        else:
            probabilities = logits.softmax(dim=-1)
            labels = torch.arange(logits.shape[-1], device=logits.device)
            decisions = labels == logits.argmax(dim=-1)
        return logits, probabilities, chunk_logits[0], weights[0], decisions
