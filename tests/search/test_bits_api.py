"""Model-level allocate_bits on the bundled example, end to end."""

from __future__ import annotations

import pytest

from quantune.errors import UserInputError
from quantune.example import load_example
from quantune.prepare import prepare
from quantune.search.allocation import Allocation, AllocationInfeasibleError, apply_allocation
from quantune.search.bits_api import AllocationOptions, ModelAllocation, allocate_bits
from quantune.search.sensitivity_cache import clear_memory_cache
from quantune.zoo.evaluators import LabelledAccuracy

FAST = AllocationOptions(weight_bits=(2, 4, 8), act_bits=(8,), proxy="output_mse", max_samples=32,
                         refine=1, show_progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def example(one_thread):
    clear_memory_cache()
    model, calib, evals = load_example()
    return model, calib, evals, prepare(model, calib)


def test_end_to_end_with_a_budget(example, tmp_path) -> None:
    model, calib, evals, _ = example
    allocation = allocate_bits(model, calib, "avg-bits=5", options=FAST)
    assert isinstance(allocation, ModelAllocation) and isinstance(allocation, Allocation)
    assert allocation.avg_bits <= 5 and allocation.status == "optimal"
    assert set(allocation.weight_bits) == {"features.0", "features.3", "features.7", "features.10",
                                           "classifier.1", "classifier.3"}
    assert allocation.measurement["proxy"] == "output_mse"
    assert "sensitivity proxy output_mse" in allocation.to_table()
    # Applied with quantize: the quantized layers carry the allocated widths.
    config = apply_allocation(allocation)
    from quantune.prepare import quantize

    qmodel = quantize(model, config, calib, mode="simulate")
    widths = {n: m.config.weight.bits for n, m in qmodel.quantized_layers().items()}
    assert widths == allocation.weight_bits
    accuracy = LabelledAccuracy(evals, model)(qmodel)["top1_accuracy"]
    assert accuracy > 0.9
    # JSON round trip keeps the choices and records the measurement.
    path = allocation.save(tmp_path / "alloc.json")
    assert Allocation.load(path).bits == allocation.bits
    assert '"measurement"' in path.read_text()


def test_second_budget_measures_nothing(example) -> None:
    *_, prepared = example
    first = allocate_bits(prepared, budget="avg-bits=6", options=FAST)
    second = allocate_bits(prepared, budget="avg-bits=3", options=FAST)
    assert second.measurement["measured"] == 0
    assert second.avg_bits <= 3 < first.avg_bits or first.avg_bits <= 3
    assert second.predicted_loss >= first.predicted_loss


def test_pins_keep_float_and_ranges(example) -> None:
    *_, prepared = example
    allocation = allocate_bits(prepared, budget={"avg_bits": 4.0}, pins={"features.0": 8},
                               options=FAST, keep_float=["classifier.3"],
                               bit_ranges={"classifier.1": (4, None)})
    assert allocation.weight_bits["features.0"] == 8
    assert allocation.weight_bits["classifier.3"] is None
    assert allocation.weight_bits["classifier.1"] >= 4


def test_infeasible_budget_names_the_minimum(example) -> None:
    *_, prepared = example
    with pytest.raises(AllocationInfeasibleError) as err:
        allocate_bits(prepared, budget="avg-bits=1.5", options=FAST)
    assert err.value.constraint == "avg_bits" and err.value.min_feasible == pytest.approx(2.0)


def test_latency_budget_measures_the_latency_table(example) -> None:
    *_, prepared = example
    unconstrained = allocate_bits(prepared, budget=None, options=FAST, latency=True)
    total = unconstrained.latency_ms
    assert total is not None and total > 0
    allocation = allocate_bits(prepared, budget={"latency_ms": total * 10}, options=FAST)
    assert allocation.latency_ms is not None and allocation.latency_ms <= total * 10


def test_unknown_option_is_a_user_error(example) -> None:
    *_, prepared = example
    with pytest.raises(UserInputError, match="unknown allocation option"):
        allocate_bits(prepared, budget="avg-bits=4", options=FAST, colour="blue")
    with pytest.raises(UserInputError, match="calibration data"):
        allocate_bits(example[0], None, "avg-bits=4")


def test_refine_keeps_the_alternative_of_least_measured_loss(example) -> None:
    import torch

    from quantune.config import QuantConfig
    from quantune.search.allocation import ilp_alternatives

    model, _, _, prepared = example
    options = FAST.replace(refine=4, proxy="loss", refine_z=0.0)
    refined = allocate_bits(prepared, budget="avg-bits=3", options=options)
    info = refined.measurement["refine"]
    assert info["loss"] == "ce" and len(info["measured"]) == 4 and len(info["z_scores"]) == 4
    assert info["predicted"] == sorted(info["predicted"])
    assert info["chosen"] == min(range(4), key=lambda i: info["measured"][i])
    gated = allocate_bits(prepared, budget="avg-bits=3", options=options.replace(refine_z=2.0)).measurement["refine"]
    eligible = [0] + [i for i in range(1, 4) if gated["z_scores"][i] < -2.0]
    assert gated["chosen"] == min(eligible, key=lambda i: gated["measured"][i])
    alternatives = ilp_alternatives(refined.sensitivity.layer_specs(
        [(i.name, i.weight_elements, i.macs) for i in prepared.layers]), "avg-bits=3", count=4)
    assert refined.bits == alternatives[info["chosen"]].bits
    # The measured loss is the real cross-entropy increase of the quantized model.
    batches = list(prepared.calibration_data(32, 0))
    qmodel = prepared.quantize(apply_allocation(refined, QuantConfig()), mode="simulate")
    with torch.no_grad():
        ce = [(torch.nn.functional.cross_entropy(qmodel(x), y, reduction="sum")
               - torch.nn.functional.cross_entropy(model(x), y, reduction="sum")).item()
              for x, y in batches]
    assert info["measured"][info["chosen"]] == pytest.approx(sum(ce) / sum(len(y) for _, y in batches),
                                                            rel=1e-4, abs=1e-6)
    plain = allocate_bits(prepared, budget="avg-bits=3", options=options.replace(refine=1))
    assert "refine" not in plain.measurement and plain.bits == alternatives[0].bits


def test_refine_measures_nothing_when_the_budget_admits_one_allocation(example, monkeypatch) -> None:
    from quantune.search import bits_api

    _, _, _, prepared = example
    options = FAST.replace(refine=4, weight_bits=(2, 8))
    names = prepared.layer_names
    # Every layer but one pinned, and the budget leaves that one a single width.
    pins = {n: 2 for n in names[1:]}
    called = []
    monkeypatch.setattr(bits_api, "measured_losses", lambda *a, **k: called.append(1))
    only = allocate_bits(prepared, budget="avg-bits=2", pins=pins, options=options)
    assert not called and "refine" not in only.measurement
    assert {w for w, _ in only.bits.values()} == {2}


def test_pinning_a_layer_kept_float_says_why() -> None:
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.embed(x)
            return self.head(self.attn(t, t, t)[0].mean(1))

    torch.manual_seed(0)
    data = [torch.randn(4, 5, 6) for _ in range(2)]
    with pytest.warns(UserWarning, match="never ran"):
        prepared = prepare(Attention().eval(), data, show_progress=False)
    with pytest.raises(UserInputError, match="kept float .never ran as a module"):
        allocate_bits(prepared, None, budget="avg-bits=6", pins={"attn.out_proj": 8})
    with pytest.raises(UserInputError, match="kept float"):
        allocate_bits(prepared, None, budget="avg-bits=6", options=AllocationOptions(groups=(("embed", "attn.out_proj"),)))
