"""The adaptation recipe (``engine adapt``): what trains, how fast, and what the unlabelled pixels do. Defaults
chosen by measurement on four cases (bench/adapt_eval.py; the table is in MODEL_CARD.md). No torch here: the
task table is built from it where torch is missing."""

from __future__ import annotations

from dataclasses import dataclass

BATCHNORM = ("auto", "adabn", "train", "frozen")


@dataclass
class Recipe:
    lr: float = 1e-3  # decoder and head; warm-up then cosine to zero over the budget
    encoder_lr: float = 0.3  # the encoder's learning rate as a share of lr
    # auto: every batch norm's statistics re-estimated on the analyst's chips (AdaBN) and then frozen where that
    # raises the held-out IoU (imagery unlike the base model's), else "train"; adabn: the same, always kept;
    # train: as the base was trained (the encoder's statistics frozen, the decoder's learned from the batches);
    # frozen: the base model's statistics throughout
    batchnorm: str = "auto"
    balance: bool = True  # draw chips so that each labelled class gets the same share of draws
    class_weights: bool = False  # weight the loss by 1/sqrt(class share) (Kampala: 0.477 against 0.627 without)
    keep_base: float = 1.0  # KL weight pulling unlabelled pixels towards the base model's answer (0: none)
    warmup: float = 0.05  # share of the budget with a rising learning rate
    jitter: float = 0.1  # per-chip gain/offset jitter of the normalised input (0: none)
    evals: int = 10  # held-out checks over the budget; the best state is kept (0: none, the last one is)
    patience: int = 4  # stop after this many checks without improvement (0: never early)
    ema: float = 0.0  # decay of an exponential moving average of the weights, checked and kept instead (0: none)
    batch: int = 4
    weight_decay: float = 1e-4
