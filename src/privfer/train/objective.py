"""The training loss: cross-entropy on hard labels (optional label smoothing) or on vote distributions."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Objective:
    """Loss of the K views of examples ``rows``: ``objective(logits, rows, k)`` is a mean over views."""

    def __init__(self, labels: torch.Tensor, votes: torch.Tensor | None = None, label_smoothing: float = 0.0):
        self.labels = labels
        self.votes = votes
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor, k: int = 1) -> torch.Tensor:
        if self.votes is not None:
            target = self.votes[rows].repeat_interleave(k, dim=0)
            return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        return F.cross_entropy(logits, self.labels[rows].repeat_interleave(k), label_smoothing=self.label_smoothing)

    def correct(self, logits: torch.Tensor, rows: torch.Tensor, k: int = 1) -> int:
        return int((logits.argmax(1) == self.labels[rows].repeat_interleave(k)).sum())
