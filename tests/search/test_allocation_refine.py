"""The significance gate of ``refine``: an alternative replaces the ILP optimum only when
it is better on the same samples by more than noise."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from quantune.search.allocation_refine import MeasuredLosses, choose_measured, paired_z_scores
from quantune.search.sensitivity_losses import loss_function, per_sample_loss_function


def _alternatives(k: int) -> list[SimpleNamespace]:
    """Stand-ins for ILP alternatives: the choice reads only their predicted loss."""
    return [SimpleNamespace(predicted_loss=0.1 * i) for i in range(k)]


def _measured(per_sample: np.ndarray) -> MeasuredLosses:
    return MeasuredLosses([float(r.mean()) for r in per_sample], per_sample)


def test_noise_does_not_replace_the_optimum_but_a_real_gain_does() -> None:
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.1, 16)
    noisy = base + rng.normal(0, 0.05, 16)  # lower mean by chance at most, no real gain
    noisy -= noisy.mean() - base.mean() + 0.005
    better = base - 0.05 + rng.normal(0, 0.005, 16)  # every sample lower
    alternatives = _alternatives(3)
    chosen, info = choose_measured(alternatives, _measured(np.stack([base, noisy, better])), "kl")
    assert info.chosen == 2 and chosen is alternatives[2] and info.z_scores[2] < -2 < info.z_scores[1]
    chosen, info = choose_measured(alternatives[:2], _measured(np.stack([base, noisy])), "kl")
    assert info.chosen == 0 and info.measured[1] < info.measured[0]  # lower, but not significantly
    _, info = choose_measured(alternatives[:2], _measured(np.stack([base, noisy])), "kl", z=0.0)
    assert info.chosen == 1  # z=0: the least measured loss wins outright
    with pytest.raises(ValueError, match="z must be"):
        choose_measured(alternatives, _measured(np.stack([base, noisy, better])), "kl", z=-1.0)


def test_paired_z_scores() -> None:
    rows = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], [0.9, 2.1, 2.9, 4.1]])
    z = paired_z_scores(rows)
    assert z[0] == 0.0 and z[2] == 0.0  # identical rows: no difference
    assert z[1] == -np.inf  # every sample lower by the same amount: certain
    assert z[3] == pytest.approx(0.0)  # +-0.1 around the same mean
    assert np.all(paired_z_scores(rows[:, :1]) == 0.0)  # one sample: no standard error
    _, info = choose_measured(_alternatives(4), MeasuredLosses([0.0, -1.0, 0.0, 0.0], rows), "kl")
    assert info.chosen == 1 and json.loads(json.dumps(info.to_dict()))["z_scores"][1] == "-inf"


@pytest.mark.parametrize("name", ["kl", "top1-ce", "cosine", "mse"])
def test_per_sample_losses_average_to_the_batch_loss(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    ref, out = torch.randn(5, 7, 10, generator=g), torch.randn(5, 7, 10, generator=g)  # token-level outputs
    per_sample = per_sample_loss_function(name)(out, ref, None)
    assert per_sample.shape == (5,)
    torch.testing.assert_close(per_sample.mean(), loss_function(name)(out, ref, None))
    # Each sample's loss depends on that sample only.
    out2 = out.clone()
    out2[3] += 1.0
    changed = per_sample_loss_function(name)(out2, ref, None) != per_sample
    assert changed.tolist() == [False, False, False, True, False]
