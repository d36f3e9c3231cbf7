"""Augmented copies of the real calibration images."""

from __future__ import annotations

import pytest
import torch

from quantune.calibration.augment import ImageAugmentation, augment_images
from quantune.config import CalibrationProcedure
from quantune.errors import UserInputError

#: Every operation switched off: the augmentation must return the real images.
IDENTITY = ImageAugmentation(greyscale=0.0, saturation=(1.0, 1.0), contrast=(1.0, 1.0), brightness=(1.0, 1.0),
                             blur=0.0, sharpen=0.0, quarter_turns=False, mixup=0.0)


def channel_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.amin((0, 2, 3), keepdim=True), x.amax((0, 2, 3), keepdim=True)


def test_augmented_images_stay_in_range_change_and_are_deterministic(smooth):
    data = smooth(3)
    batches = augment_images(data, 20, seed=0)
    assert [b.shape for b in batches] == [(8, 3, 20, 20), (8, 3, 20, 20), (4, 3, 20, 20)]
    x = torch.cat(batches)
    lo, hi = channel_range(torch.cat(data))
    assert bool((x >= lo - 1e-5).all()) and bool((x <= hi + 1e-5).all())
    real = torch.cat(data)
    nearest = torch.cdist(x.flatten(1), real.flatten(1)).amin(1)
    assert bool((nearest > 1e-3).all())  # none is a plain copy of a real image
    assert torch.equal(torch.cat(augment_images(data, 20, seed=0)), x)
    assert not torch.equal(torch.cat(augment_images(data, 20, seed=1)), x)
    assert augment_images(data, 0) == []


def test_without_operations_the_real_images_come_back_in_a_seeded_order(smooth):
    data = smooth(2)
    real = torch.cat(data)
    x = torch.cat(augment_images([(b, torch.zeros(8)) for b in data], 16, seed=3, batch_size=5, policy=IDENTITY))
    # Each real image exactly once (16 = the calibration set): a permutation, no mixing.
    match = torch.cdist(x.flatten(1), real.flatten(1)).argmin(1)
    assert sorted(match.tolist()) == list(range(16))
    assert torch.allclose(x, real[match], atol=1e-5)


def only(**operation: object) -> ImageAugmentation:
    return ImageAugmentation(**{**IDENTITY.__dict__, **operation})


def unit_scaled(data: list[torch.Tensor], policy: ImageAugmentation) -> torch.Tensor:
    """16 augmented images, each channel scaled by the real data's range to [0, 1]."""
    lo, hi = channel_range(torch.cat(data))
    return (torch.cat(augment_images(data, 16, seed=0, policy=policy)) - lo) / (hi - lo)


def roughness(u: torch.Tensor) -> float:
    """Mean absolute difference of horizontally neighbouring pixels."""
    return float((u[..., 1:] - u[..., :-1]).abs().mean())


def test_each_operation_does_what_it_says(smooth):
    images = smooth(2)
    grey = unit_scaled(images, only(greyscale=1.0))
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5) and torch.allclose(grey[:, 0], grey[:, 2], atol=1e-5)

    rough = [torch.rand(8, 3, 20, 20, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plain = roughness(unit_scaled(rough, IDENTITY))
    assert roughness(unit_scaled(rough, only(blur=1.0))) < 0.5 * plain
    # Sharpening raises the contrast between neighbours (clamping to the range limits it).
    assert roughness(unit_scaled(rough, only(sharpen=1.0))) > 1.3 * plain

    real = torch.cat(images)
    turned = torch.cat(augment_images(images, 16, seed=0, policy=only(quarter_turns=True)))
    candidates = torch.stack([torch.rot90(real, k, (2, 3)) for k in range(4)], 1)  # [16, 4, C, H, W]
    distance = (turned[:, None, None] - candidates[None]).flatten(3).abs().amax(3)  # [16, 16, 4]
    assert bool((distance.flatten(1).amin(1) < 1e-5).all())  # every output is a turned real image
    assert len({int(k) for k in distance.flatten(1).argmin(1) % 4}) > 1  # and not all by the same angle


def test_non_image_inputs_and_bad_policies_are_refused():
    with pytest.raises(UserInputError, match="image inputs"):
        augment_images([torch.zeros(4, 12, dtype=torch.long)], 4)
    with pytest.raises(UserInputError, match="image inputs"):
        augment_images([torch.randn(4, 12)], 4)
    with pytest.raises(UserInputError, match="one shape"):
        augment_images([torch.randn(2, 3, 8, 8), torch.randn(2, 3, 9, 9)], 4)
    with pytest.raises(UserInputError, match="probability"):
        ImageAugmentation(mixup=1.5)
    with pytest.raises(UserInputError, match="blur"):
        ImageAugmentation(blur=0.7, sharpen=0.5)
    with pytest.raises(UserInputError, match="contrast"):
        ImageAugmentation(contrast=(1.5, 0.5))
    with pytest.raises(UserInputError, match="augmented_samples"):
        CalibrationProcedure(augmented_samples=-1)


def test_procedure_adds_augmented_samples_to_layerwise_training_only(smooth_cnn, quantize_w3a8):
    model, data = smooth_cnn
    options = {"adaround": True, "adaround_iters": 5, "layerwise_holdout": 0.0}
    _, plain = quantize_w3a8(model, data, **options)
    _, mixed = quantize_w3a8(model, data, augmented_samples=16, **options)
    log = mixed.calibration_log
    assert log["augmented"]["samples"] == 16 and "augmented" not in plain.calibration_log
    rows = {r["name"]: r["rows"] for r in plain.calibration_log["adaround"]["layers"]}
    mixed_rows = {r["name"]: r["rows"] for r in log["adaround"]["layers"]}
    assert all(mixed_rows[n] == rows[n] * 3 // 2 for n in rows)  # 32 real + 16 augmented samples
    for name, layer in plain.quantized_layers().items():  # ranges from the real images alone
        assert torch.equal(layer.a_scale, mixed.quantized_layers()[name].a_scale)


def test_search_dimension_sets_the_procedure_and_is_opt_in():
    from quantune.tune_space import DEFAULT_DIMENSIONS, describe_point, point_to_config

    point = {"w_bits": 4, "adaround": True, "augmented_samples": 64}
    assert point_to_config(point, ["a", "b", "c"]).procedure.augmented_samples == 64
    assert "+aug64" in describe_point(point)
    assert point_to_config({"w_bits": 4}, ["a", "b"]).procedure.augmented_samples == 0
    assert DEFAULT_DIMENSIONS["augmented_samples"] == (0,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_images_on_a_gpu_come_back_there_and_equal_the_cpu_result(smooth):
    data = smooth(2)
    on_gpu = augment_images([b.cuda() for b in data], 12, seed=5)
    assert all(b.is_cuda for b in on_gpu)
    expected = torch.cat(augment_images(data, 12, seed=5))
    assert torch.allclose(torch.cat(on_gpu).cpu(), expected, atol=1e-6)

