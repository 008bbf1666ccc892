"""RLW: random loss weights, drawn afresh at every step."""

from __future__ import annotations

import torch

from mtbench.combiners.base import Step, one_of
from mtbench.combiners.lossweighted import LossWeighted
from mtbench.options import Option

#: the distributions of ``combiner.distribution``
DISTRIBUTIONS = ("normal", "uniform", "dirichlet", "bernoulli", "constrained_bernoulli")


class RLW(LossWeighted):
    """Random loss weighting (Lin et al. 2022, "Reasonable Effectiveness of Random Weighting:
    A Litmus Test for Multi-Task Learning", TMLR): at every step the task weights are a fresh
    random draw, lambda = f(x), and the network is trained on sum_i w_i L_i, w = T lambda.
    ``distribution`` picks the draw x and its normalisation f onto the simplex:

    - ``normal`` (the default, as LibMTL's RLW): x_i ~ N(0, 1), lambda = softmax(x);
    - ``uniform``: x_i ~ U(0, 1), lambda = softmax(x);
    - ``dirichlet``: lambda ~ Dirichlet(1, ..., 1) (uniform on the simplex: exponential draws
      divided by their sum);
    - ``bernoulli``: x_i ~ Bernoulli(1/2) given that at least one x_i is 1 (for T <= 62 an
      exact draw, a uniform integer in [1, 2^T) read bit by bit; beyond, all ones in the
      case of no 1, of probability 2^-T), lambda = x / sum(x);
    - ``constrained_bernoulli``: one task drawn uniformly, lambda its indicator.

    The draws come from the step's generator on the training device (``Step.generator``),
    with no host synchronisation, so a run (resumed or not) draws the same weights.

    Scale: the paper's weights lambda sum to 1; mtbench's w = T lambda sum to T (the
    baseline's weights are all 1). LibMTL's RLW (normal) is the paper's: 1/T of this
    gradient. torchjd's ``Random`` aggregator is the paper's gradient-level variant: it
    combines the per-task gradients with softmax-of-normal weights summing to 1, on the shared
    parameters the direction of ``distribution=normal`` at 1/T of its scale. No state.
    """

    name = "rlw"
    style = ("#aec7e8", "d")
    options = {
        "distribution": Option(
            "normal",
            "the weights' draw: normal | uniform (softmax of the draws) | dirichlet | bernoulli | constrained_bernoulli",
            one_of(*DISTRIBUTIONS),
        ),
    }

    def draw(self, step: Step) -> torch.Tensor:
        """lambda: one draw on the simplex [T], on the losses' device (``state_dtype``)."""
        losses, g, t = step.losses, step.generator, self.num_tasks
        dtype = self.state_dtype(losses)
        kw = {"dtype": dtype, "device": losses.device}
        if self.distribution == "normal":
            return torch.randn(t, generator=g, **kw).softmax(0)
        if self.distribution == "uniform":
            return torch.rand(t, generator=g, **kw).softmax(0)
        if self.distribution == "dirichlet":
            e = torch.empty(t, **kw).exponential_(generator=g)
            return e / e.sum()
        if self.distribution == "bernoulli":
            if t <= 62:
                k = torch.randint(1, 2**t, (1,), generator=g, device=losses.device)
                x = ((k >> torch.arange(t, device=losses.device)) & 1).to(dtype)
            else:
                x = (torch.rand(t, generator=g, **kw) < 0.5).to(dtype)
                x = torch.where(x.sum() > 0, x, torch.ones_like(x))
            return x / x.sum()
        k = torch.randint(t, (1,), generator=g, device=losses.device)
        return (torch.arange(t, device=losses.device) == k).to(dtype)

    def task_weights(self, step: Step) -> torch.Tensor:
        return self.num_tasks * self.draw(step)
