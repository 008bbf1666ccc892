"""The NaN watch: the first training step with a non-finite loss or gradient, recorded on the
device (no host synchronisation per step) and read at the loop's logging interval."""

from __future__ import annotations

import torch

__all__ = ["bad_reason", "watch"]


def watch(losses, model, step, first_bad, bad_tasks, bad_kind) -> None:
    """Record (on the device, no synchronisation) the first step with a non-finite loss or gradient."""
    finite_losses = torch.isfinite(losses.detach())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norms = torch._foreach_norm(grads) if grads else []
    finite_grads = (
        torch.stack(norms).isfinite().all() if norms else torch.ones((), dtype=torch.bool, device=losses.device)
    )
    bad_now = ~(finite_losses.all() & finite_grads)
    new = bad_now & (first_bad < 0)
    first_bad.copy_(torch.where(new, torch.full_like(first_bad, step), first_bad))
    bad_tasks.copy_(torch.where(new, ~finite_losses, bad_tasks))
    kind = torch.where(finite_losses.all(), torch.full_like(bad_kind, 2), torch.full_like(bad_kind, 1))
    bad_kind.copy_(torch.where(new, kind, bad_kind))


def bad_reason(epoch: int, step: int, kind: int, bad_tasks: torch.Tensor, names: list[str]) -> str:
    """The failure's message: the epoch, the step, and the tasks (a loss) or the combined gradient."""
    if kind == 1:
        tasks = [names[j] for j in torch.nonzero(bad_tasks.cpu()).flatten().tolist()]
        return f"non-finite loss at epoch {epoch}, step {step}, task(s): {', '.join(tasks)}"
    return (
        f"non-finite gradient at epoch {epoch}, step {step} (all task losses finite; the combined gradient overflowed)"
    )
