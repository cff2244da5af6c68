import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtpf.losses.info_nce import InfoNCELoss
from tests.conftest import free_port, run_command


def reference_info_nce(anchors, positives, temperature):
    """The paper's formula written out term by term."""
    z, zp = F.normalize(anchors, dim=-1), F.normalize(positives, dim=-1)
    total = 0.0
    for i in range(len(z)):
        numerator = math.exp(float(z[i] @ zp[i]) / temperature)
        denominator = sum(math.exp(float(z[i] @ zp[j]) / temperature) for j in range(len(z)))
        total += -math.log(numerator / denominator)
    return total / len(z)


def test_matches_the_formula():
    torch.manual_seed(0)
    anchors, positives = torch.randn(6, 8), torch.randn(6, 8)
    loss = InfoNCELoss(temperature=0.05)(anchors, positives)
    assert loss.item() == pytest.approx(reference_info_nce(anchors, positives, 0.05), rel=1e-5)


def test_aligned_pairs_score_lower_than_shuffled():
    torch.manual_seed(0)
    anchors = torch.randn(16, 8)
    positives = anchors + 0.05 * torch.randn(16, 8)
    loss = InfoNCELoss()
    assert loss(anchors, positives) < loss(anchors, positives[torch.randperm(16)])


def test_bad_temperature_and_shapes():
    with pytest.raises(ValueError, match="temperature=0"):
        InfoNCELoss(0)
    with pytest.raises(ValueError, match="differ in shape"):
        InfoNCELoss()(torch.randn(3, 4), torch.randn(2, 4))


def test_two_processes_equal_one_big_batch(tmp_path):
    """2 ranks x 4 pairs with gathered negatives == 1 process x 8 pairs: same loss, same (averaged) gradient."""
    result_file = str(tmp_path / "ddp.pt")
    worker = Path(__file__).with_name("ddp_info_nce_worker.py")
    command = ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), str(worker), result_file]
    run_command(command, tmp_path, timeout=300)
    got = torch.load(result_file)

    torch.manual_seed(0)
    encoder = torch.nn.Linear(8, 4)
    anchors_in, positives_in = torch.randn(8, 8), torch.randn(8, 8)
    loss = InfoNCELoss()(encoder(anchors_in), encoder(positives_in))
    loss.backward()
    torch.testing.assert_close(got["loss"], loss.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got["grad"], encoder.weight.grad, atol=1e-6, rtol=1e-5)
