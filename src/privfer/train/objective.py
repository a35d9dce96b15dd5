"""The training loss: cross-entropy on hard labels (optional label smoothing) or on vote distributions, plus an
optional negative-vs-rest term for the negative score.

The negative term (``negative_weight`` > 0) is a logistic loss on the model's negative log-odds, the logsumexp of
the negative classes' logits minus that of the other classes' (the log of P(negative) / P(rest) under the
softmax): the quantity the negative score ranks faces by. Its target is 1 for a face labelled with a negative
class (with votes: the share of votes for negative classes). It is part of each example's loss, so DP-SGD clips
it with the cross-entropy inside one per-example gradient and it costs no privacy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PrivferError


def check_negative_mask(negative: torch.Tensor | None, classes=None) -> None:
    """Refuse the negative term when the classes are not both in and out of the negative set (it would then be
    constant). ``classes``: their names, for the message."""
    if negative is None or not 0 < int(negative.sum()) < len(negative):
        names = f"the classes {', '.join(classes)} are" if classes else "the classes are"
        raise PrivferError(f"negative_weight: {names} not both in and out of the negative set "
                           "(anger, disgust, fear, sadness, contempt)")


def negative_log_odds(logits: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """[N] log(P(negative) / P(rest)) of softmax(logits), for ``negative`` a bool mask over the classes."""
    return torch.logsumexp(logits[:, negative], dim=1) - torch.logsumexp(logits[:, ~negative], dim=1)


class Objective:
    """Loss of the K views of examples ``rows``: ``objective(logits, rows, k)`` is a mean over views.

    ``negative``: bool mask over the classes (``privfer.taxonomy.negative_mask``), needed when
    ``negative_weight`` > 0, which adds that weight times the negative-vs-rest logistic loss."""

    def __init__(self, labels: torch.Tensor, votes: torch.Tensor | None = None, label_smoothing: float = 0.0,
                 negative: torch.Tensor | None = None, negative_weight: float = 0.0):
        self.labels = labels
        self.votes = votes
        self.label_smoothing = label_smoothing
        self.negative_weight = negative_weight
        if negative_weight:
            check_negative_mask(negative)
            neg = negative.to(labels.device)
            # the negative target of each example: its label's membership, or its votes' negative share
            self.negative_target = (votes[:, neg].sum(1) if votes is not None else neg[labels].float())
            self.negative = neg

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor, k: int = 1, reduction: str = "mean") -> torch.Tensor:
        """The mean loss over the views, or with ``reduction="none"`` each view's loss ([b*k])."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be mean or none, got {reduction!r}")
        if self.votes is not None:
            target = self.votes[rows].repeat_interleave(k, dim=0)
            loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
            loss = loss.mean() if reduction == "mean" else loss
        else:
            loss = F.cross_entropy(logits, self.labels[rows].repeat_interleave(k), label_smoothing=self.label_smoothing,
                                   reduction=reduction)
        if self.negative_weight:
            loss = loss + self.negative_weight * F.binary_cross_entropy_with_logits(
                negative_log_odds(logits, self.negative), self.negative_target[rows].repeat_interleave(k),
                reduction=reduction)
        return loss

    def correct(self, logits: torch.Tensor, rows: torch.Tensor, k: int = 1) -> int:
        return int((logits.argmax(1) == self.labels[rows].repeat_interleave(k)).sum())
