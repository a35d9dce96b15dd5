"""Differential privacy bookkeeping: noise calibration, the PRV accountant, and the budget that is enforced.

The whole privacy state (noise multiplier, sampling rate, clipping norm, target, accountant history)
is one :class:`PrivacyState` that is saved with checkpoints, resumed, and written to the model card.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from opacus.accountants import PRVAccountant
from opacus.accountants.utils import get_noise_multiplier

from ..errors import PrivferError

ACCOUNTANT = "prv"


def check_budget(epsilon: float, delta: float, n: int) -> None:
    """Refuse targets that give no meaningful guarantee: epsilon <= 0, delta outside (0, 1/n)."""
    if not epsilon > 0:
        raise PrivferError(f"epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1.0 / n:
        raise PrivferError(f"delta must be in (0, 1/n) = (0, {1.0 / n:.3g}) for n={n} private examples, got {delta}")


def plan_noise(epsilon: float, delta: float, sample_rate: float, steps: int, releases: list | tuple = ()) -> float:
    """Noise multiplier so that ``steps`` Poisson-sampled steps at ``sample_rate`` meet (epsilon, delta) under PRV.

    ``releases``: other mechanisms on the same data, as accountant entries [noise, sample_rate, steps] (a
    Gaussian release of a sum over all the data is [noise, 1.0, 1]); the steps' noise is then raised until
    the composition of all of them meets the target."""
    try:
        sigma = float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                           steps=steps, accountant=ACCOUNTANT))
    except ValueError as e:
        raise PrivferError(f"cannot reach epsilon={epsilon}, delta={delta} in {steps} steps at q={sample_rate:.4g}: {e}") from None
    if not releases:
        return sigma
    releases = [list(r) for r in releases]
    if epsilon_of(releases, delta) >= epsilon:
        raise PrivferError(f"the releases before training ({releases}) alone spend epsilon >= {epsilon}")

    def fits(s: float) -> bool:
        return epsilon_of(releases + [[s, sample_rate, steps]], delta) <= epsilon

    lo, hi = sigma, sigma * 1.05  # the steps alone need sigma: the composition needs a little more
    while not fits(hi):
        lo, hi = hi, hi * 1.5
    while hi - lo > 1e-3 * hi:  # bisection to 0.1%
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def steps_per_epoch(sample_rate: float) -> int:
    """Poisson-sampled steps that make one expected pass over the data."""
    return max(1, round(1.0 / sample_rate))


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon (PRV upper bound) spent by an accountant history [(noise, sample_rate, steps), ...]."""
    if not history or sum(h[2] for h in history) == 0:
        return 0.0
    acc = PRVAccountant()
    acc.history = [tuple(h) for h in history]
    with np.errstate(divide="ignore"):  # sample rate 1 (a release over all the data) takes log(0) on a masked branch
        return float(acc.get_epsilon(delta=delta))


@dataclass
class PrivacyState:
    """Everything about the DP-SGD run that the guarantee depends on."""

    epsilon_target: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    n_private: int
    planned_steps: int
    steps: int = 0
    history: list = field(default_factory=list)
    accountant: str = ACCOUNTANT
    #: Gaussian releases over all the private data planned besides the steps, e.g. the features' mean
    #: (``privfer.train.center``): accountant entries [noise, 1.0, 1], in ``history`` once made.
    releases: list = field(default_factory=list)

    @classmethod
    def plan(cls, epsilon: float, delta: float, n: int, batch_size: int, epochs: int, max_grad_norm: float,
             releases: list | tuple = ()) -> "PrivacyState":
        """Calibrate noise for ``epochs`` epochs of Poisson sampling with expected batch ``batch_size`` out of ``n``
        (and the ``releases`` noise multipliers, each one Gaussian release of a sum over the private data)."""
        check_budget(epsilon, delta, n)
        if batch_size > n:
            raise PrivferError(f"batch size {batch_size} is larger than the {n} private examples")
        if epochs <= 0:
            raise PrivferError(f"epochs must be >= 1, got {epochs}")
        q = batch_size / n
        steps = epochs * steps_per_epoch(q)
        rel = [[float(s), 1.0, 1] for s in releases]
        sigma = plan_noise(epsilon, delta, q, steps, rel)
        return cls(epsilon, delta, sigma, max_grad_norm, q, n, steps, releases=rel)

    def record_release(self, noise_multiplier: float) -> None:
        """Account a planned Gaussian release over all the private data (refused if it was not planned)."""
        entry = [float(noise_multiplier), 1.0, 1]
        if self.history.count(entry) >= self.releases.count(entry):
            raise PrivferError(f"refusing a release with noise {noise_multiplier}: the budget has no room for it")
        self.history.append(entry)

    def record_step(self) -> None:
        """Account one noisy step (history is run-length encoded like Opacus' accountants)."""
        if self.steps >= self.planned_steps:
            raise PrivferError(f"refusing step {self.steps + 1}: the budget was planned for {self.planned_steps} steps")
        if self.history and self.history[-1][0] == self.noise_multiplier and self.history[-1][1] == self.sample_rate:
            s, q, k = self.history[-1]
            self.history[-1] = [s, q, k + 1]
        else:
            self.history.append([self.noise_multiplier, self.sample_rate, 1])
        self.steps += 1

    def epsilon(self) -> float:
        return epsilon_of(self.history, self.delta)

    def extend_to(self, planned_steps: int) -> None:
        """Allow more steps (e.g. resuming with more epochs) only if the target still holds at the new total."""
        eps = epsilon_of(self.releases + [[self.noise_multiplier, self.sample_rate, planned_steps]], self.delta)
        if eps > self.epsilon_target:
            raise PrivferError(f"{planned_steps} steps at noise {self.noise_multiplier:.4g} would spend epsilon={eps:.3f} "
                               f"> target {self.epsilon_target}; train fewer epochs or start a new run")
        self.planned_steps = planned_steps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PrivacyState":
        return cls(**d)
