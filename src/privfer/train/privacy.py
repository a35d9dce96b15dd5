"""Differential privacy bookkeeping: noise calibration, the PRV accountant, and the budget that is enforced.

The whole privacy state (noise multiplier, sampling rate, clipping norm, target, accountant history)
is one :class:`PrivacyState` that is saved with checkpoints, resumed, and written to the model card.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

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


def plan_noise(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Noise multiplier so that ``steps`` Poisson-sampled steps at ``sample_rate`` meet (epsilon, delta) under PRV."""
    try:
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=ACCOUNTANT))
    except ValueError as e:
        raise PrivferError(f"cannot reach epsilon={epsilon}, delta={delta} in {steps} steps at q={sample_rate:.4g}: {e}") from None


def steps_per_epoch(sample_rate: float) -> int:
    """Poisson-sampled steps that make one expected pass over the data."""
    return max(1, round(1.0 / sample_rate))


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon (PRV upper bound) spent by an accountant history [(noise, sample_rate, steps), ...]."""
    if not history or sum(h[2] for h in history) == 0:
        return 0.0
    acc = PRVAccountant()
    acc.history = [tuple(h) for h in history]
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

    @classmethod
    def plan(cls, epsilon: float, delta: float, n: int, batch_size: int, epochs: int, max_grad_norm: float) -> "PrivacyState":
        """Calibrate noise for ``epochs`` epochs of Poisson sampling with expected batch ``batch_size`` out of ``n``."""
        check_budget(epsilon, delta, n)
        if batch_size > n:
            raise PrivferError(f"batch size {batch_size} is larger than the {n} private examples")
        if epochs <= 0:
            raise PrivferError(f"epochs must be >= 1, got {epochs}")
        q = batch_size / n
        steps = epochs * steps_per_epoch(q)
        sigma = plan_noise(epsilon, delta, q, steps)
        return cls(epsilon, delta, sigma, max_grad_norm, q, n, steps)

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
        eps = epsilon_of([[self.noise_multiplier, self.sample_rate, planned_steps]], self.delta)
        if eps > self.epsilon_target:
            raise PrivferError(f"{planned_steps} steps at noise {self.noise_multiplier:.4g} would spend epsilon={eps:.3f} "
                               f"> target {self.epsilon_target}; train fewer epochs or start a new run")
        self.planned_steps = planned_steps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PrivacyState":
        return cls(**d)
