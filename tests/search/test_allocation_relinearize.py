"""Relinearized allocation: the rounds' gate and stopping rules (stubbed measurements), and
``allocate_bits(relinearize=...)`` end to end on the bundled example."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantune.errors import UserInputError
from quantune.example import load_example
from quantune.prepare import prepare
from quantune.search import allocation_relinearize as relin
from quantune.search.allocation_budget import Budget
from quantune.search.allocation_refine import MeasuredLosses
from quantune.search.allocation_result import Allocation, LayerChoice
from quantune.search.bits_api import AllocationOptions, allocate_bits
from quantune.search.sensitivity_cache import clear_memory_cache


def _allocation(widths: tuple[int, ...]) -> Allocation:
    layers = tuple(LayerChoice(f"l{i}", 100, 1000, w, 8, 0.0) for i, w in enumerate(widths))
    return Allocation(layers, Budget(avg_bits=5.0), "ilp", "optimal")


class _Script:
    """Stands in for the model: proposals and their measured losses come from lists.

    ``proposals`` are consumed one per solve; a proposal further from the current
    allocation than the trust region allows is skipped for the next one.
    """

    def __init__(self, proposals: list[Allocation | None], losses: dict[tuple[int, ...], np.ndarray]) -> None:
        self.proposals = list(proposals)
        self.losses = losses
        self.contexts: list[dict[str, tuple[int, int]]] = []
        self.limits: list[int | None] = []

    def table_around(self, cells):  # type: ignore[no-untyped-def]
        self.contexts.append(dict(cells))
        return cells

    def solve(self, _table, current, limit):  # type: ignore[no-untyped-def]
        self.limits.append(limit)
        while self.proposals:
            proposal = self.proposals.pop(0)
            if proposal is None:
                return None
            if limit is None or relin._changed(current, proposal) <= limit:
                return proposal, -0.01
        return None

    def measured(self, _prepared, alternatives, *_args, **_kwargs) -> MeasuredLosses:
        (alloc,) = alternatives
        row = self.losses[tuple(c.w_bits for c in alloc.layers)]
        return MeasuredLosses([float(row.mean())], row[None, :])


def _run(monkeypatch, script: _Script, start: Allocation, rounds: int = 3, z: float = 2.0):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(relin, "measured_losses", script.measured)
    return relin.relinearize(None, start, rounds=rounds, table_around=script.table_around,  # type: ignore[arg-type]
                             solve=script.solve, batches=[], loss_name="kl", z=z, show_progress=False)


RNG = np.random.default_rng(0)
BASE = RNG.gamma(2.0, 0.1, 32)
BETTER = BASE - 0.05 + RNG.normal(0, 0.005, 32)  # every sample lower: significant
WORSE = BASE + 0.05 + RNG.normal(0, 0.005, 32)
LUCKY = BASE + RNG.normal(0, 0.05, 32)
LUCKY -= LUCKY.mean() - BASE.mean() + 0.002  # lower by chance, not significantly


def test_a_rejected_step_is_retried_in_half_the_trust_region(monkeypatch) -> None:
    start = _allocation((8, 8, 8, 8))
    far, near = _allocation((2, 2, 6, 6)), _allocation((6, 8, 8, 8))  # 4 layers moved, then 1
    losses = {(8, 8, 8, 8): BASE, (2, 2, 6, 6): WORSE, (6, 8, 8, 8): BETTER}
    script = _Script([far, _allocation((2, 2, 2, 8)), near, None], losses)
    result, steps = _run(monkeypatch, script, start, rounds=2)
    assert result is near and result.layers[0].w_bits == 6
    # Round 0: the unlimited step (4 layers) fails; in half the region (2 layers) the
    # 3-layer proposal is out of reach and the 1-layer one is kept; round 1 finds nothing
    # predicted better.
    assert [(s.round, s.max_changes, s.changed_layers, s.accepted) for s in steps] == [
        (0, None, 4, False), (0, 2, 1, True)]
    assert script.limits == [None, 2, None]
    assert script.contexts == [relin.allocation_cells(start), relin.allocation_cells(near)]
    assert steps[0].z_score > 2 and steps[1].z_score < -2
    assert steps[1].measured_after < steps[1].measured_before
    assert json.loads(json.dumps([s.to_dict() for s in steps]))[1]["accepted"] is True


def test_the_gate_keeps_the_start_against_noise_and_z0_takes_any_gain(monkeypatch) -> None:
    start, lucky = _allocation((8, 4, 2)), _allocation((4, 8, 2))
    losses = {(8, 4, 2): BASE, (4, 8, 2): LUCKY}
    result, steps = _run(monkeypatch, _Script([lucky, lucky], losses), start)
    # Two layers moved, rejected; half of it (1 layer) has no proposal within it.
    assert result is start and [s.accepted for s in steps] == [False]
    result, steps = _run(monkeypatch, _Script([lucky, None], losses), start, z=0.0)
    assert result is lucky and [s.accepted for s in steps] == [True]


def test_rounds_stop_when_nothing_is_predicted_better(monkeypatch) -> None:
    start = _allocation((8, 4, 2))
    result, steps = _run(monkeypatch, _Script([None], {}), start)
    assert result is start and steps == ()
    assert _run(monkeypatch, _Script([], {}), start, rounds=0) == (start, ())
    with pytest.raises(ValueError, match="rounds"):
        _run(monkeypatch, _Script([], {}), start, rounds=-1)


def test_allocation_cells_leave_float_layers_out() -> None:
    alloc = _allocation((8, 32, 2))
    assert relin.allocation_cells(alloc) == {"l0": (8, 8), "l2": (2, 8)}


@pytest.fixture(scope="module")
def prepared(one_thread):
    clear_memory_cache()
    model, calib, _ = load_example()
    return prepare(model, calib)


def test_allocate_bits_relinearizes_within_the_budget(prepared) -> None:
    # Five widths and the z=0 gate: here the first round's unlimited step measures lower
    # and is kept, so the accepting path runs (the other path is checked as well).
    widths = (2, 3, 4, 6, 8)
    options = AllocationOptions(weight_bits=widths, act_bits=(8,), proxy="loss", max_samples=32,
                                refine=1, refine_z=0.0, show_progress=False)
    plain = allocate_bits(prepared, budget="avg-bits=2.5", options=options)
    relinearized = allocate_bits(prepared, budget="avg-bits=2.5", options=options.replace(relinearize=2))
    steps = relinearized.measurement["relinearize"]
    assert "relinearize" not in plain.measurement and relinearized.avg_bits <= 2.5
    for step in steps:
        assert step["predicted_change"] < 0  # only predicted gains are measured
        assert step["accepted"] == (step["measured_after"] < step["measured_before"])  # z = 0
        assert step["max_changes"] is None or step["changed_layers"] <= step["max_changes"]
    if any(step["accepted"] for step in steps):
        assert relinearized.status == "relinearized" and relinearized.bits != plain.bits
        # Its layer costs are the float-linearized table's (monotone envelope applied).
        table = relinearized.sensitivity
        assert relinearized.predicted_loss == pytest.approx(sum(
            max(table.value(c.name, w, 8) for w in widths if w >= c.w_bits) for c in relinearized.layers))
    else:
        assert relinearized.bits == plain.bits and relinearized.status == plain.status


def test_relinearize_needs_the_loss_proxy(prepared) -> None:
    with pytest.raises(UserInputError, match="proxy='loss'"):
        allocate_bits(prepared, budget="avg-bits=4", proxy="output_mse", relinearize=1)
    with pytest.raises(UserInputError, match=">= 0"):
        allocate_bits(prepared, budget="avg-bits=4", relinearize=-1)


@pytest.mark.parametrize("seed", range(6))
def test_ilp_near_is_the_best_allocation_within_the_trust_region(seed: int) -> None:
    """Brute force over every allocation of a small instance: ``ilp_near`` returns the
    least-loss one that meets the budget and moves at most ``max_changes`` layers, and
    ``None`` exactly when none of those beats the start."""
    import itertools
    import math

    from quantune.search.allocation import allocate_bits as allocate_from_specs
    from quantune.search.allocation import ilp_near
    from quantune.search.allocation_synthetic import synthetic_layers

    layers = synthetic_layers(5, seed=seed, w_bits=(2, 4, 8), with_latency=False, noise=0.3)
    budget = Budget(avg_bits=4.0)
    start = allocate_from_specs(layers, budget, policy="greedy")
    current = {c.name: (c.w_bits, c.a_bits) for c in start.layers}
    params = sum(spec.params for spec in layers)
    start_loss = math.fsum(spec.option(current[spec.name]).sensitivity for spec in layers)
    for limit in (1, 2, None):
        best = None
        for combo in itertools.product(*(spec.options for spec in layers)):
            moved = sum(o.key != current[spec.name] for spec, o in zip(layers, combo, strict=True))
            bits = sum(spec.params * o.w_bits for spec, o in zip(layers, combo, strict=True))
            if (limit is not None and moved > limit) or bits > 4.0 * params:
                continue
            loss = math.fsum(o.sensitivity for o in combo)
            if best is None or loss < best:
                best = loss
        near = ilp_near(layers, budget, current, max_changes=limit)
        if best is None or best >= start_loss - 1e-9 * max(1.0, abs(start_loss)):
            assert near is None, (limit, best, start_loss)
            continue
        assert near is not None and near.predicted_loss == pytest.approx(best, rel=1e-9, abs=1e-12)
        assert near.avg_bits <= 4.0
        if limit is not None:
            assert sum(c.w_bits != current[c.name][0] for c in near.layers) <= limit
