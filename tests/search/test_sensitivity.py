"""Sensitivity tables on the bundled example: shape, sanity, proxies and caching."""

from __future__ import annotations

import pytest
import torch

from quantune.batches import model_inputs
from quantune.errors import UserInputError
from quantune.example import load_example
from quantune.prepare import prepare
from quantune.search import sensitivity as sens_mod
from quantune.search.sensitivity import measure_sensitivity
from quantune.search.sensitivity_cache import clear_memory_cache
from quantune.search.sensitivity_losses import loss_function, resolve_loss
from quantune.search.sensitivity_table import Candidates, derive_cells, monotone_envelope

SMALL = Candidates(weight_bits=(2, 4, 8), act_bits=(4, 8))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prepared(one_thread):
    model, calib, _ = load_example()
    return prepare(model, calib)


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture
def count_measurements(monkeypatch):
    calls: list[int] = []
    real = sens_mod._measure

    def counting(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(sum(len(cells) for cells in result.values()))
        return result

    monkeypatch.setattr(sens_mod, "_measure", counting)
    return calls


def _more_bits_lower(table, layers, w_low=2, w_high=8, a=8) -> int:
    return sum(table.value(n, w_low, a) > table.value(n, w_high, a) for n in layers)


def test_table_has_every_layer_and_cell(prepared) -> None:
    table = measure_sensitivity(prepared, candidates=SMALL, proxy="output_mse", max_samples=32,
                                show_progress=False)
    assert table.layer_names == prepared.layer_names
    for name in table.layer_names:
        assert set(table.values[name]) == set(SMALL.cells())
    # Additive mode measures the axes only: 3 weight cells + 1 extra activation cell.
    assert table.measured == len(prepared.layers) * 4 and table.cached == 0
    assert table.proxy == "output_mse" and table.n_samples == 32
    assert "proxy output_mse" in table.to_table()


@pytest.mark.parametrize("proxy", ["output_mse", "hessian"])
def test_fewer_bits_cost_more(prepared, proxy: str) -> None:
    table = measure_sensitivity(prepared, candidates=SMALL, proxy=proxy, max_samples=32,
                                hessian_probes=2, show_progress=False)
    for name in table.layer_names:
        for cell, value in table.values[name].items():
            assert value >= 0.0 and torch.isfinite(torch.tensor(value)), (name, cell)
    layers = table.layer_names
    # Never fewer bits predicted better; strictly worse for most layers (a confident
    # classifier's last layers can have a Hessian of ~0 under cross-entropy).
    for n in layers:
        assert table.value(n, 2, 8) >= table.value(n, 4, 8) >= table.value(n, 8, 8)
        assert table.value(n, 8, 4) >= table.value(n, 8, 8)
    assert _more_bits_lower(table, layers) >= len(layers) // 2 + 1
    assert sum(table.value(n, 8, 4) > table.value(n, 8, 8) for n in layers) >= len(layers) // 2 + 1


def test_loss_proxy_ranks_two_bits_worst(prepared) -> None:
    cands = Candidates(weight_bits=(2, 8), act_bits=(8,))
    table = measure_sensitivity(prepared, candidates=cands, proxy="loss", max_samples=32, show_progress=False)
    assert table.loss == "ce"  # the example's batches carry labels
    assert _more_bits_lower(table, table.layer_names) >= len(table.layer_names) - 1


def test_second_measurement_is_free(prepared, count_measurements) -> None:
    kwargs = dict(candidates=SMALL, proxy="output_mse", max_samples=32, show_progress=False)
    first = measure_sensitivity(prepared, **kwargs)
    second = measure_sensitivity(prepared, **kwargs)
    assert len(count_measurements) == 1
    assert second.measured == 0 and second.cached == first.measured
    assert second.values == first.values


def test_json_cache_survives_the_process_and_extends_by_cell(prepared, tmp_path, count_measurements) -> None:
    path = tmp_path / "cache.json"
    base = Candidates(weight_bits=(4, 8), act_bits=(8,))
    measure_sensitivity(prepared, candidates=base, proxy="output_mse", max_samples=32,
                        cache_path=path, show_progress=False)
    clear_memory_cache()  # as if a new process started
    again = measure_sensitivity(prepared, candidates=base, proxy="output_mse", max_samples=32,
                                cache_path=path, show_progress=False)
    assert again.measured == 0 and len(count_measurements) == 1
    wider = Candidates(weight_bits=(2, 4, 8), act_bits=(8,))
    more = measure_sensitivity(prepared, candidates=wider, proxy="output_mse", max_samples=32,
                               cache_path=path, show_progress=False)
    assert more.measured == len(prepared.layers)  # only the new 2-bit column
    # Another proxy is another entry: it does measure.
    other = measure_sensitivity(prepared, candidates=base, proxy="hessian", max_samples=32,
                                cache_path=path, show_progress=False)
    assert other.measured == 2 * len(prepared.layers)


def test_optuna_storage_cache(prepared, tmp_path) -> None:
    pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cands = Candidates(weight_bits=(4, 8), act_bits=(8,))
    measure_sensitivity(prepared, candidates=cands, proxy="output_mse", max_samples=32, storage=url,
                        show_progress=False)
    clear_memory_cache()
    again = measure_sensitivity(prepared, candidates=cands, proxy="output_mse", max_samples=32, storage=url,
                                show_progress=False)
    assert again.measured == 0


def test_derived_cells_and_monotone_envelope() -> None:
    cands = Candidates(weight_bits=(4, 8), act_bits=(4, 8))
    measured = {(8, 8): 0.1, (4, 8): 0.5, (8, 4): 0.3}
    cells = derive_cells(measured, cands)
    assert cells[(4, 4)] == pytest.approx(0.5 + 0.3 - 0.1)
    noisy = {(8, 8): 0.2, (4, 8): 0.1, (8, 4): 0.3, (4, 4): 0.25}
    mono = monotone_envelope(noisy)
    assert mono[(4, 8)] == 0.2 and mono[(4, 4)] == 0.3 and mono[(8, 8)] == 0.2


def test_loss_auto_resolution() -> None:
    logits = torch.randn(4, 10)
    labels = torch.tensor([1, 2, 3, 4])
    assert resolve_loss("auto", logits, (logits, labels)) == "ce"
    assert resolve_loss("auto", logits, logits) == "kl"
    emb = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    assert resolve_loss("auto", emb, model_inputs(emb)) == "cosine"
    with pytest.raises(UserInputError, match="labels"):
        resolve_loss("ce", logits, logits)


def test_top1_ce_weighs_only_what_can_flip_the_float_decision() -> None:
    top1_ce, kl = loss_function("top1-ce"), loss_function("kl")
    ref = torch.tensor([[4.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 2.0]])
    assert resolve_loss("top1-ce", ref, ref) == "top1-ce"
    # At the float output it is the float model's own cross-entropy to its top-1 class.
    expected = -torch.log_softmax(ref.double(), dim=1)[[0, 1], [0, 1]].mean()
    assert float(top1_ce(ref, ref, ref)) == pytest.approx(float(expected))
    # Shuffling the non-top logits changes the distribution (KL > 0) but not this loss.
    shuffled = ref[:, [0, 3, 1, 2]].clone()
    shuffled[1] = ref[1, [3, 1, 0, 2]]
    assert float(kl(shuffled, ref, ref)) > 0.1
    assert float(top1_ce(shuffled, ref, ref)) == pytest.approx(float(expected))
    # Lowering the top-1 logit raises it, monotonically.
    values = []
    for drop in (0.0, 1.0, 2.0, 4.0):
        out = ref.clone()
        out[0, 0] -= drop
        values.append(float(top1_ce(out, ref, ref)))
    assert values == sorted(values) and values[-1] > values[0]


def test_bad_arguments_are_user_errors(prepared) -> None:
    with pytest.raises(UserInputError, match="proxy"):
        measure_sensitivity(prepared, proxy="magic")
    with pytest.raises(UserInputError, match="unknown layers"):
        measure_sensitivity(prepared, layers=["nope"])
    with pytest.raises(UserInputError, match="from 2 to 8"):
        Candidates(weight_bits=(1, 8))


class _WithUnusedHead(torch.nn.Module):
    """A pooler-like layer that runs but never reaches the output (as in BERT encoders)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(8, 4)
        self.unused = torch.nn.Linear(4, 4)

    def forward(self, x):
        y = self.body(x)
        self.unused(y)
        return y


def test_hessian_proxy_handles_layers_outside_the_loss() -> None:
    torch.manual_seed(0)
    prepared = prepare(_WithUnusedHead(), [torch.randn(16, 8) for _ in range(2)])
    table = measure_sensitivity(prepared, candidates=Candidates((2, 8), (8,)), proxy="hessian",
                                loss="mse", show_progress=False)
    assert all(v == 0.0 for v in table.values["unused"].values())
    assert table.value("body", 2, 8) > table.value("body", 8, 8)


def _ce_of(prepared, config, batches) -> float:
    """Sample-weighted mean cross-entropy of ``config``'s simulated model (independent of
    the probes under test)."""
    qmodel = prepared.quantize(config, mode="simulate")
    total, n = 0.0, 0
    with torch.no_grad():
        for inputs, labels in batches:
            total += float(torch.nn.functional.cross_entropy(qmodel(inputs), labels, reduction="sum"))
            n += len(labels)
    return total / n


def test_context_sensitivity_is_the_loss_increase_over_the_quantized_model(prepared) -> None:
    from quantune.config import ActQuant, LayerQuantConfig, QuantConfig, WeightQuant

    cands = Candidates(weight_bits=(2, 4, 8), act_bits=(8,))
    table = measure_sensitivity(prepared, candidates=cands, proxy="loss", max_samples=32,
                                context_bits=4, show_progress=False)
    assert table.context_bits == 4 and "around W4" in table.to_table()
    batches = list(prepared.calibration_data(32, 0))
    names = prepared.layer_names

    def widths(w_of: dict[str, int]) -> QuantConfig:
        return QuantConfig(default=None, overrides=tuple(
            (n, LayerQuantConfig(WeightQuant(bits=w_of.get(n, 4)), ActQuant(bits=8))) for n in names))

    around = _ce_of(prepared, widths({}), batches)
    for name in (names[0], names[-1]):
        assert table.value(name, 4, 8) == 0.0  # the context cell is the starting model
        for w in (2, 8):
            expected = _ce_of(prepared, widths({name: w}), batches) - around
            assert table.value(name, w, 8) == pytest.approx(expected, rel=1e-4, abs=1e-6), (name, w)
    # Around float the same cells differ (the context is not ignored).
    flat = measure_sensitivity(prepared, candidates=cands, proxy="loss", max_samples=32, show_progress=False)
    assert flat.context_bits is None
    assert any(flat.value(n, 4, 8) != 0.0 for n in names)


def test_context_needs_the_loss_proxy_and_a_candidate_width(prepared) -> None:
    with pytest.raises(UserInputError, match="loss"):
        measure_sensitivity(prepared, candidates=SMALL, proxy="output_mse", context_bits=4)
    with pytest.raises(UserInputError, match="not a candidate"):
        measure_sensitivity(prepared, candidates=SMALL, proxy="loss", context_bits=6)


def test_sensitivity_around_an_allocation_is_the_loss_increase_over_it(prepared, monkeypatch) -> None:
    from quantune.config import ActQuant, LayerQuantConfig, QuantConfig, WeightQuant
    from quantune.search import sensitivity_probes

    passes: list[int] = []
    real_pass = sensitivity_probes.mean_loss_increase
    monkeypatch.setattr(sensitivity_probes, "mean_loss_increase",
                        lambda *a, **k: passes.append(1) or real_pass(*a, **k))

    cands = Candidates(weight_bits=(2, 4, 8), act_bits=(8,))
    names = prepared.layer_names
    # A mixed allocation: alternate 2- and 8-bit weights, the last layer left float.
    cells = {n: ((2, 8) if i % 2 == 0 else (8, 8)) for i, n in enumerate(names[:-1])}
    table = measure_sensitivity(prepared, candidates=cands, proxy="loss", max_samples=32,
                                context_cells=cells, show_progress=False)
    assert table.context_cells == cells and "around an allocation" in table.to_table()
    assert table.to_dict()["context_cells"][names[0]] == "2,8"
    batches = list(prepared.calibration_data(32, 0))

    def widths(w_of: dict[str, int]) -> QuantConfig:
        layers = {n: c[0] for n, c in cells.items()} | w_of
        return QuantConfig(default=None, overrides=tuple(
            (n, LayerQuantConfig(WeightQuant(bits=w), ActQuant(bits=8)) if w else None)
            for n, w in ((n, layers.get(n)) for n in names)))

    around = _ce_of(prepared, widths({}), batches)
    for name in (names[0], names[1], names[-1]):
        own = cells.get(name)
        for w in (2, 4, 8):
            if own is not None and w == own[0]:
                assert table.value(name, w, 8) == 0.0  # its own cell: the allocation itself
                continue
            expected = _ce_of(prepared, widths({name: w}), batches) - around
            assert table.value(name, w, 8) == pytest.approx(expected, rel=1e-4, abs=1e-6), (name, w)
    # One pass for the allocation itself, then every (layer, width) but each layer's own cell.
    assert len(passes) == 1 + len(names) * 3 - len(cells)
    # Cached under its own key: measuring again costs nothing, another allocation does.
    again = measure_sensitivity(prepared, candidates=cands, proxy="loss", max_samples=32,
                                context_cells=cells, show_progress=False)
    assert again.measured == 0 and again.values == table.values
    other = dict(cells, **{names[0]: (8, 8)})
    assert measure_sensitivity(prepared, candidates=cands, proxy="loss", max_samples=32,
                               context_cells=other, show_progress=False).measured > 0


def test_allocation_context_needs_the_loss_proxy_and_known_layers(prepared) -> None:
    cells = {prepared.layer_names[0]: (4, 8)}
    with pytest.raises(UserInputError, match="context_cells needs the 'loss' proxy"):
        measure_sensitivity(prepared, candidates=SMALL, proxy="output_mse", context_cells=cells)
    with pytest.raises(UserInputError, match="not both"):
        measure_sensitivity(prepared, candidates=SMALL, proxy="loss", context_cells=cells, context_bits=4)
    with pytest.raises(UserInputError, match="unknown layers"):
        measure_sensitivity(prepared, candidates=SMALL, proxy="loss", context_cells={"nope": (4, 8)})
