"""Padded positions of text batches stay out of calibration: activation ranges, layer-wise
samples, output statistics and the output-error sensitivity proxy see only the real tokens."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantune.batches import run_model
from quantune.calibration.bias_correction import output_means
from quantune.calibration.collect import collect_input_stats
from quantune.calibration.layer_io import RowSelector, collect_layer_samples
from quantune.config import LayerQuantConfig, WeightQuant
from quantune.modules import QuantizedLayer
from quantune.search.sensitivity_probes import measure_output_error
from quantune.token_mask import real_token_samples, real_tokens

PAD = 0


class TinyEncoder(nn.Module):
    """Token embedding -> Linear -> masked mean; the padding token embeds far out of range."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        with torch.no_grad():
            self.embed.weight[PAD] = 1000.0
        self.fc = nn.Linear(8, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.embed(input_ids))
        m = attention_mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)


def _batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for lengths in ([5, 2, 7], [3, 6]):
        ids = torch.full((len(lengths), 7), PAD)
        for row, n in enumerate(lengths):
            ids[row, :n] = torch.randint(1, 10, (n,), generator=gen)
        out.append({"input_ids": ids, "attention_mask": (ids != PAD).long()})
    return out


def test_hooks_see_real_tokens_only_while_a_masked_batch_runs():
    model = TinyEncoder().eval()
    seen: list[tuple[int, list[int] | None]] = []

    def hook(mod, inputs):
        x = inputs[0]
        samples = real_token_samples(x, "linear")
        seen.append((real_tokens(x, "linear").shape[0], None if samples is None else samples.tolist()))
        # A convolution's tensor is never masked, whatever its shape.
        assert real_tokens(x, "conv1d") is x

    model.fc.register_forward_pre_hook(hook)
    batch = _batches()[0]
    with torch.no_grad():
        run_model(model, batch)
        assert real_tokens(torch.zeros(3, 7, 8), "linear").shape == (3, 7, 8)  # no active mask outside
        run_model(model, {**batch, "attention_mask": torch.ones(3, 7, dtype=torch.long)})
    assert seen[0] == (14, [0] * 5 + [1] * 2 + [2] * 7)
    assert seen[1] == (3, None)  # nothing padded: the tensor itself, [batch, tokens, features]


def test_activation_ranges_and_output_statistics_ignore_padding():
    model = TinyEncoder().eval()
    batches = _batches()
    collected = collect_input_stats(model, ["fc"], batches)
    stats = collected.histograms
    assert collected.n_samples == 5
    with torch.no_grad():
        real = torch.cat([model.embed(b["input_ids"])[b["attention_mask"].bool()] for b in batches])
    assert stats["fc"].max == float(real.max()) < 1000.0
    # SmoothQuant's per-channel maxima skip the padded rows too.
    torch.testing.assert_close(collected.channel_absmax["fc"], real.abs().amax(0))
    means = output_means(model, {"fc": "linear"}, batches, stop=False)["fc"]
    with torch.no_grad():
        torch.testing.assert_close(means.mean.float(), model.fc(real).mean(0), rtol=1e-5, atol=1e-5)


def test_layer_samples_are_the_real_tokens_with_their_sentence_ids():
    model = TinyEncoder().eval()
    batches = _batches()
    samples = collect_layer_samples(model, model, "fc", "linear", batches, RowSelector(1.0, 0, 0))
    assert samples is not None and len(samples) == 5 + 2 + 7 + 3 + 6
    assert samples.ids().tolist() == [0] * 5 + [1] * 2 + [2] * 7 + [3] * 3 + [4] * 6
    assert float(samples.x.max()) < 1000.0
    with torch.no_grad():
        torch.testing.assert_close(samples.y, model.fc(samples.x))


def test_output_error_proxy_measures_real_tokens_only():
    model = TinyEncoder().eval()
    batches = _batches()
    cell = (4, 8)
    layer = QuantizedLayer(model.fc, LayerQuantConfig(WeightQuant(bits=4), None))
    layer.set_weight_qparams(model.fc.weight.detach().abs().amax(dim=1) / 7, torch.zeros(4, dtype=torch.int32))
    err = measure_output_error(model, ["fc"], [cell], batches, lambda c: {"fc": layer}, lambda: None)
    with torch.no_grad():
        real = torch.cat([model.embed(b["input_ids"])[b["attention_mask"].bool()] for b in batches])
        y = model.fc(real)
        expected = float((layer(real) - y).pow(2).sum())
    assert err.sse["fc"][cell] == pytest.approx(expected, rel=1e-4)
    assert err.signal["fc"] == pytest.approx(float(y.pow(2).sum()), rel=1e-4)
