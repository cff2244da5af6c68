import itertools

import torch

from mtpf.pcgrad import flat_grad, project_conflicting, smallest_cosine, write_flat_grad


def test_conflicting_gradients_are_projected_per_the_rule():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g1.g2 = -1 < 0: g1' = g1 - (g1.g2 / |g2|^2) g2 = [0.5, 0.5]; g2' = g2 - (g2.g1 / |g1|^2) g1 = [0, 1]
    torch.testing.assert_close(project_conflicting([g1, g2]), torch.tensor([0.5, 1.5]))
    projected_1 = torch.tensor([0.5, 0.5])
    assert torch.dot(projected_1, g2) == 0  # the projection removes exactly the conflicting component


def test_smallest_cosine_finds_the_conflicting_pair():
    same, orthogonal, opposite = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 3.0]), torch.tensor([-1.0, 0.0])
    assert smallest_cosine([same, orthogonal]) == 0.0
    assert smallest_cosine([same, orthogonal, opposite]) == -1.0


def test_agreeing_gradients_are_summed_unchanged():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(project_conflicting([g1, g2]), torch.tensor([2.0, 1.0]))


def test_three_tasks_follow_the_rule_for_some_order():
    """Each task's result depends on the (random) order of the others; the sum must be one the rule allows."""
    gradients = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([-1.0, 1.0, 0.0]), torch.tensor([0.0, -1.0, 1.0])]

    def by_rule(i, order):
        result = gradients[i].clone()
        for j in order:  # always against the ORIGINAL g_j
            dot = torch.dot(result, gradients[j])
            if dot < 0:
                result = result - dot / gradients[j].dot(gradients[j]) * gradients[j]
        return result

    options = [
        [by_rule(i, order) for order in itertools.permutations([j for j in range(3) if j != i])] for i in range(3)
    ]
    allowed = [sum(choice) for choice in itertools.product(*options)]
    for seed in range(5):
        total = project_conflicting(gradients, generator=torch.Generator().manual_seed(seed))
        assert any(torch.allclose(total, option) for option in allowed), total


def test_flat_grad_round_trip():
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.arange(4.0).view(2, 2)
    flat = flat_grad([a, b])
    assert flat.tolist() == [0, 1, 2, 3, 0, 0, 0]
    write_flat_grad([a, b], flat * 2)
    assert b.grad.tolist() == [0, 0, 0] and a.grad[1, 1] == 6
