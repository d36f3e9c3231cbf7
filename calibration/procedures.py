"""Data-driven steps run after a model is quantized: GPTQ, AdaRound, AdaQuant, BN re-estimation, bias correction.

Order (as in Hubara et al.'s pipeline): weight rounding (GPTQ, then AdaRound) and
layer-wise calibration first (they change the weights and step sizes; AdaQuant starts
from the rounded weights), then BatchNorm statistics on the calibrated model, then bias
correction, which removes whatever per-channel mean shift remains.
"""

from __future__ import annotations

import time
from typing import Any

from quantune.config import CalibrationProcedure


def run_procedure(qmodel: Any, prepared: Any, procedure: CalibrationProcedure) -> dict[str, Any]:
    """Apply the steps ``procedure`` asks for, in place, on ``qmodel``.

    ``prepared`` is the :class:`quantune.prepare.PreparedModel` the model came from (its
    float model, unfolded BatchNorms and calibration data). The returned log (also set
    as ``qmodel.calibration_log``) records what each step did and how long it took.
    """
    log: dict[str, Any] = {}
    if not (procedure.gptq or procedure.adaround or procedure.adaquant or procedure.bn_reestimate
            or procedure.bias_correction):
        return log
    batches = prepared.pass_batches(procedure.max_samples, procedure.seed)
    show = bool(getattr(prepared, "show_progress", False))
    # GPTQ then bias correction, nothing in between: correct each layer's bias right
    # after rounding it, in GPTQ's sequential pass (one pass over the layers, not two).
    fused_bias = (procedure.gptq and procedure.bias_correction and procedure.gptq_sequential
                  and not procedure.adaround and not procedure.adaquant and not procedure.bn_reestimate)
    check = _BiasCheck(qmodel, prepared.float_model, batches) if procedure.bias_correction else None
    if procedure.gptq:
        from quantune.calibration.gptq_layers import run_gptq

        t = time.perf_counter()
        if check is not None and fused_bias:
            check.before()
        done = run_gptq(qmodel, prepared.float_model, batches, damp=procedure.gptq_damp,
                        act_order=procedure.gptq_act_order, sequential=procedure.gptq_sequential,
                        float_target=procedure.gptq_float_target, correct_bias=fused_bias,
                        show_progress=show)
        log["gptq"] = {"layers": [r.__dict__ for r in done], "seconds": time.perf_counter() - t}
        if fused_bias:
            assert check is not None
            log["bias_correction"] = {"shift_removed": {r.name: r.bias_shift for r in done},
                                      "fused_with": "gptq", "seconds": 0.0, **check.decide()}
    layerwise_batches = batches
    if procedure.synthetic_samples and (procedure.adaround or procedure.adaquant):
        t = time.perf_counter()
        synthetic, report = prepared.synthetic_data(procedure.synthetic_samples, procedure.synthetic_iters,
                                                    procedure.seed)
        layerwise_batches = batches + synthetic
        # "seconds": this call's (~0 when an earlier quantization distilled the same set).
        log["synthetic"] = {"samples": report.samples, "iters": report.iters, "targets": report.targets,
                            "loss_start": report.loss_start, "loss_end": report.loss_end,
                            "distill_seconds": report.seconds, "seconds": time.perf_counter() - t}
    if procedure.augmented_samples and (procedure.adaround or procedure.adaquant):
        from quantune.calibration.augment import augment_images

        t = time.perf_counter()
        layerwise_batches = layerwise_batches + augment_images(batches, procedure.augmented_samples,
                                                               seed=procedure.seed)
        log["augmented"] = {"samples": procedure.augmented_samples, "seconds": time.perf_counter() - t}
    for method in ("adaround", "adaquant"):  # AdaQuant fine-tunes what AdaRound rounded
        if getattr(procedure, method):
            from quantune.calibration.block_reconstruction import run_block_reconstruction
            from quantune.calibration.layerwise import run_layerwise

            t = time.perf_counter()
            if method == "adaround" and procedure.adaround_blocks:
                results = run_block_reconstruction(qmodel, prepared.float_model, prepared.layers,
                                                   layerwise_batches, procedure, show_progress=show)
            else:
                results = run_layerwise(qmodel, prepared.float_model, prepared.layers, layerwise_batches,
                                        procedure, method, show_progress=show)
            log[method] = {"layers": [r.__dict__ for r in results], "seconds": time.perf_counter() - t,
                           **({"blocks": True} if method == "adaround" and procedure.adaround_blocks else {})}
    if procedure.bn_reestimate:
        from quantune.calibration.bn_reestimate import reestimate_bn

        t = time.perf_counter()
        report = reestimate_bn(qmodel, getattr(prepared, "bn_modules", {}), batches)
        log["bn_reestimate"] = {"batchnorms": report, "seconds": time.perf_counter() - t}
    if procedure.bias_correction and not fused_bias:
        assert check is not None
        from quantune.calibration.bias_correction import bias_correction

        t = time.perf_counter()
        check.before()
        removed = bias_correction(qmodel, prepared.float_model, batches, show_progress=show)
        log["bias_correction"] = {"shift_removed": removed, **check.decide(), "seconds": time.perf_counter() - t}
    qmodel.calibration_log = log
    return log


class _BiasCheck:
    """Keeps a bias correction only if the whole model's output error on calibration
    batches does not grow (:mod:`quantune.calibration.output_error`): the mean shift it
    removes can be dominated by a few clipped outlier tokens."""

    def __init__(self, qmodel: Any, float_model: Any, batches: list[Any]) -> None:
        self.qmodel = qmodel
        self.float_model = float_model
        self.batches = batches
        self.snapshot: dict[str, Any] = {}

    def before(self) -> None:
        """Remember the biases before the correction."""
        from quantune.calibration.output_error import bias_snapshot

        self.snapshot = bias_snapshot(self.qmodel.quantized_layers())

    def decide(self) -> dict[str, Any]:
        """Keep the corrected biases or put the remembered ones back; says which, and the errors."""
        from quantune.calibration.output_error import (
            CHECK_BATCHES,
            bias_snapshot,
            reference_outputs,
            relative_output_error,
            restore_biases,
        )

        layers = self.qmodel.quantized_layers()
        self.qmodel.set_mode("simulate")
        check = self.batches[:CHECK_BATCHES]
        reference = reference_outputs(self.float_model, check)
        if reference is None:  # outputs that are not tensors: nothing to compare
            return {"kept": True, "check": "skipped: the model's outputs are not tensors"}
        corrected = bias_snapshot(layers)
        error_corrected = relative_output_error(self.qmodel, check, reference)
        restore_biases(layers, self.snapshot)
        error_plain = relative_output_error(self.qmodel, check, reference)
        kept = error_corrected <= error_plain
        if kept:
            restore_biases(layers, corrected)
        return {"kept": kept, "output_error_corrected": error_corrected, "output_error_uncorrected": error_plain}
