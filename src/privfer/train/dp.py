"""One DP-SGD step with Opacus: Poisson batch -> physical chunks -> per-example gradients (mean over K
augmented views) -> per-example clipping -> Gaussian noise -> optimizer step.

Built directly on Opacus' ``GradSampleModule`` and ``DPOptimizer`` (the same pieces ``PrivacyEngine``
wires up), so that sampling, virtual steps and augmentation multiplicity stay under our control.

Under torchrun (``distributed=True``) the pieces are Opacus' distributed ones, as ``PrivacyEngine``
uses with ``distributed=True``: ``DPDDP`` (rank 0's weights are broadcast at start) and
``DistributedDPOptimizer``. Each rank clips the per-example gradients of its share of the global
Poisson batch and sums them; rank 0 alone adds the Gaussian noise N(0, sigma^2 C^2) to its sum; the sums
are all-reduced. The released gradient is therefore (sum of all clipped gradients + one noise draw) /
expected global batch: exactly the single-process release, so the same accounting applies. (Identical
noise drawn on every rank from a shared generator would also work, but would need a generator outside
torch's default one and change the single-process noise stream; noise on rank 0 keeps it.)

With ``ghost=True`` (``clipping: ghost``) the pieces are Opacus' fast-gradient-clipping ones instead
(``GradSampleModuleFastGradientClipping`` with ghost clipping, ``DPOptimizerFastGradientClipping``): a first
backward pass computes each example's gradient norm without forming the gradient (for a linear layer on
[N, D] inputs, the product of the input's and the output gradient's norms), and a second one the sum of the
examples' gradients, each weighted by its clipping factor. The released sum is the same as with per-example
gradients, and so is the noise (same shapes, same draws), so the accounting does not change; only the cost
does: no [N, *weight] tensor per layer, which for a 4,032 x 128 hidden layer is 2 GB per 1,024 examples.
"""
from __future__ import annotations

from typing import Callable

import torch
from opacus import GradSampleModule
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn

from .objective import Objective


class DPStepper:
    """Wrap a model and optimizer for DP-SGD with clipping norm ``max_grad_norm`` and noise ``noise_multiplier``.

    ``expected_batch_size`` is the Poisson batch's expectation (q * n): the noisy sum is divided by it,
    not by the realised batch size, as the analysis requires. With ``distributed=True`` it is still the
    expectation of the *global* batch (see the module docstring).
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, noise_multiplier: float,
                 max_grad_norm: float, expected_batch_size: int, physical_batch_size: int = 256, aug_mult: int = 1,
                 distributed: bool = False, ghost: bool = False):
        if ghost and (aug_mult != 1 or distributed):
            raise ValueError("ghost clipping needs aug_mult 1 and one process")
        self.distributed = distributed
        self.ghost = ghost
        if ghost:
            self.gsm = GradSampleModuleFastGradientClipping(net, batch_first=True, loss_reduction="mean",
                                                            max_grad_norm=max_grad_norm, use_ghost_clipping=True)
            self.opt = DPOptimizerFastGradientClipping(optimizer, noise_multiplier=noise_multiplier,
                                                       max_grad_norm=max_grad_norm,
                                                       expected_batch_size=expected_batch_size, loss_reduction="mean")
        elif distributed:
            world = torch.distributed.get_world_size()
            self.gsm = GradSampleModule(DPDDP(net), batch_first=True, loss_reduction="mean")
            # DistributedDPOptimizer divides each rank's (noised) sum by expected_batch_size, then averages
            # over ranks (all-reduce sum / world): dividing by E / world here makes that (sum + noise) / E.
            self.opt = DistributedDPOptimizer(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                              expected_batch_size=expected_batch_size / world, loss_reduction="mean")
        else:
            self.gsm = GradSampleModule(net, batch_first=True, loss_reduction="mean")
            self.opt = DPOptimizer(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                   expected_batch_size=expected_batch_size, loss_reduction="mean")
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.k = aug_mult
        self.chunk = max(1, physical_batch_size // aug_mult)

    def step(self, objective: Objective, idx: torch.Tensor, views: Callable[[torch.Tensor], torch.Tensor],
             extra: Callable[[], list[torch.Tensor]] | None = None) -> tuple[float, int, int]:
        """One logical step on the examples ``idx`` (a Poisson sample, row numbers of the training set).

        ``views(rows)`` returns K augmented model inputs per example of ``rows``, ``[b*K, ...]`` (example-major):
        views of the faces, or of a fixed front-end's cached features. ``extra()``, when given, returns a
        gradient computed from public data alone (one tensor per trainable parameter), added to the released
        noisy gradient before the update: post-processing of the release, so it costs no privacy.
        Returns (summed loss over views, correct predictions over views, number of views).
        """
        self.opt.zero_grad(set_to_none=True)
        if len(idx) == 0:
            if self.distributed:
                self._empty_share_step(extra)
            else:
                self._noise_only_step(extra)
            return 0.0, 0, 0
        chunks = torch.split(idx, self.chunk)
        loss_sum, correct, seen = 0.0, 0, 0
        for i, rows in enumerate(chunks):
            xs = views(rows)
            out = self.gsm(xs)
            if self.ghost:  # two backward passes: the norms, then the clipped sum (into p.grad)
                per_example = objective(out, rows, 1, reduction="none")
                DPTensorFastGradientClipping(self.gsm, self.opt, per_example, "mean").backward()
                loss = per_example.detach().mean()
            else:
                loss = objective(out, rows, self.k)
                loss.backward()
            if self.k > 1:
                for p in self.params:  # per-example gradient = mean over its K views, before clipping
                    gs = p.grad_sample
                    p.grad_sample = gs.view(len(rows), self.k, *gs.shape[1:]).mean(dim=1)
            loss_sum += loss.item() * len(xs)
            correct += objective.correct(out, rows, self.k)
            seen += len(xs)
            if i < len(chunks) - 1:  # virtual step: clip and accumulate, no noise yet
                self.opt.signal_skip_step(do_skip=True)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        if extra is None:
            self.opt.step()  # clip the last chunk, add noise once, scale by expected batch size, update
        elif self.opt.pre_step():  # the same release, then the public gradient added to it
            if self.distributed:
                self.opt.reduce_gradients()
            self._add(extra)
            self.opt.original_optimizer.step()
        return loss_sum, correct, seen

    def _add(self, extra: Callable[[], list[torch.Tensor]] | None) -> None:
        if extra is not None:
            for p, g in zip(self.params, extra(), strict=True):
                p.grad.add_(g)

    def _noise_only_step(self, extra=None) -> None:
        """An empty Poisson batch still releases a noisy (all-noise) update, as the analysis assumes."""
        std = self.opt.noise_multiplier * self.opt.max_grad_norm
        for p in self.params:
            p.grad = torch.normal(0.0, std, p.shape, device=p.device) / self.opt.expected_batch_size
        self._add(extra)
        self.opt.original_optimizer.step()

    def public_gradient(self, loss: Callable[[nn.Module], torch.Tensor], norm: float) -> list[torch.Tensor]:
        """The gradient of ``loss(model)`` (a loss on public data) for the trainable parameters, rescaled to
        Euclidean norm ``norm``; Opacus' hooks are off meanwhile, so no per-example state is touched."""
        self.gsm.disable_hooks()
        try:
            grads = torch.autograd.grad(loss(self.gsm._module), self.params)
        finally:
            self.gsm.enable_hooks()
        total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        return [g * (norm / total.clamp_min(1e-12)) for g in grads]

    def _empty_share_step(self, extra=None) -> None:
        """Distributed, and this rank's share of the global batch is empty: it contributes a zero sum to the
        all-reduce (rank 0 still adds the noise), so every rank takes part in the same collectives."""
        for p in self.params:
            p.summed_grad = torch.zeros_like(p)
        self.opt.add_noise()
        for p in self.params:
            p.grad /= self.opt.expected_batch_size
        self.opt.reduce_gradients()
        self._add(extra)
        self.opt.original_optimizer.step()
