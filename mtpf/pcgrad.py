"""PCGrad (Yu et al., 2020) on the parameters that the tasks share.

For each task gradient g_i and every other task j (random order): if g_i . g_j < 0, remove from g_i its
component along g_j (the *original* g_j). The projected gradients are summed. Parameters that only one task
touches (its LoRA slot, its head) keep their own gradient.
"""

from __future__ import annotations

import torch


def project_conflicting(gradients: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """Sum of the PCGrad-projected flat task gradients."""
    projected = []
    for i, gradient in enumerate(gradients):
        result = gradient.clone()
        others = [j for j in range(len(gradients)) if j != i]
        for position in torch.randperm(len(others), generator=generator).tolist():
            other = gradients[others[position]]
            dot = torch.dot(result, other)
            if dot < 0:
                result -= dot / other.dot(other).clamp(min=1e-20) * other
        projected.append(result)
    return torch.stack(projected).sum(dim=0)


def smallest_cosine(gradients: list[torch.Tensor]) -> float:
    """The most conflicting pair's cosine: below 0, PCGrad changes the step; near 0 or above, it changes nothing."""
    unit = [g / g.norm().clamp(min=1e-20) for g in gradients]
    return min(float(torch.dot(a, b)) for i, a in enumerate(unit) for b in unit[i + 1 :])


def flat_grad(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """The parameters' gradients as one vector (zeros where a parameter got none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in parameters])


def write_flat_grad(
    parameters: list[torch.nn.Parameter], flat: torch.Tensor, touched: list[bool] | None = None
) -> None:
    """Scatter a flat gradient back; parameters no task touched keep no gradient (AdamW then skips them)."""
    offset = 0
    for index, p in enumerate(parameters):
        size = p.numel()
        if touched is None or touched[index]:
            p.grad = flat[offset : offset + size].view_as(p).to(p.dtype).clone()
        offset += size
