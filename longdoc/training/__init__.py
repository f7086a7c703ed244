"""Training: a head (and optionally the encoder) on the windows it will be served on.

Two regimes, one output format:

* ``freeze_encoder``: window vectors are computed once by :mod:`longdoc.features` (cached,
  keyed by encoder, chunking and data) and only the head trains (:mod:`.frozen`): minutes
  on 2 CPU cores.
* end to end (:mod:`.end_to_end`): gradients flow through the encoder for every window of
  each document (``train_windows`` K samples K windows per document per step; every window
  is used at evaluation), gradient accumulation, and on CUDA gradient checkpointing and
  bf16/fp16 autocast.

Both run the one fit loop of :mod:`.fit` (epochs, history, best state, early stopping).
The output directory is a checkpoint in exactly the formats ``longdoc export`` reads
(``BertForSequenceClassification`` for the ``logits-*`` heads; ``BertModel`` + ``head.json``
+ ``head.safetensors`` for the other heads; written by
:func:`longdoc.checkpoint.save_checkpoint`), with the chunking it was trained with in
``head.json``. Next to it: ``training.json`` (configuration, per-epoch log, timings, data
checksums, machine) and ``training.png`` (:mod:`.plots`).

Optimisation flags left unset take the defaults of the run's regime
(``config.regime_defaults``: a head on cached vectors gets a budget that converges, end to
end the fine-tuning schedule); without validation data a stratified slice of the training
data is held out (``common.holdout_split``); ``training.json`` records both choices.

Multi-label data (label sets; ``problem``) trains a sigmoid per label (binary
cross-entropy), picks epochs by validation micro-F1 and then chooses the decision
thresholds on the validation data (``common.choose_decision``), saved as ``decision.json``.

``baseline="tfidf"`` trains the non-neural whole-text baseline instead (:mod:`.tfidf`).
The command line is :mod:`.cli` (``longdoc train``); :mod:`.sweep` (``longdoc sweep``)
trains a grid of chunkings and heads and keeps the best.

Modules, in import order: ``config`` <- ``fit``, ``common`` <- ``frozen``, ``end_to_end``,
``tfidf``, ``plots`` <- ``trainer`` <- ``cli`` <- ``sweep_report``, ``sweep``.
"""

from longdoc.training.config import TrainConfig
from longdoc.training.trainer import train

__all__ = ["TrainConfig", "train"]
