"""``quantune.check``: re-apply a saved configuration and gate on regressions (for CI).

The candidate is evaluated in integer mode and compared with a baseline report written
by ``quantune tune``: a regression is a metric more than ``max_drop`` worse than the
baseline's quantized metric, or a model larger than ``max_size`` bytes.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from quantune.config import QuantConfig
from quantune.errors import UserInputError
from quantune.evaluation import Evaluator
from quantune.jsonio import read_json_file
from quantune.prepare import quantize


@dataclass(frozen=True)
class Gate:
    """One pass/fail comparison."""

    name: str
    value: float
    limit: float
    passed: bool
    message: str


@dataclass
class CheckResult:
    """Outcome of :func:`check`; ``passed`` is False when any gate failed."""

    metric_name: str
    metric: float
    float_metric: float
    baseline_metric: float
    size_bytes: int
    gates: list[Gate] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def table(self) -> str:
        lines = [f"{'gate':<10} {'value':>14} {'limit':>14}  result", "-" * 50]
        for g in self.gates:
            lines.append(f"{g.name:<10} {g.value:>14.4f} {g.limit:>14.4f}  {'PASS' if g.passed else 'FAIL'}")
        lines.append(
            f"({self.metric_name}: float {self.float_metric:.4f}, baseline {self.baseline_metric:.4f}, "
            f"now {self.metric:.4f}; size {self.size_bytes} bytes)"
        )
        return "\n".join(lines)

    def write_junit(self, path: str | Path) -> None:
        """JUnit XML, one test case per gate, readable by GitHub Actions / GitLab CI."""
        suite = ET.Element("testsuite", name="quantune.check", tests=str(len(self.gates)),
                           failures=str(sum(not g.passed for g in self.gates)), time=f"{self.wall_s:.3f}")
        for g in self.gates:
            case = ET.SubElement(suite, "testcase", classname="quantune.check", name=g.name)
            if not g.passed:
                ET.SubElement(case, "failure", message=g.message).text = g.message
        suites = ET.Element("testsuites")
        suites.append(suite)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def read_baseline(baseline: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A baseline report (``report.json`` of ``quantune tune``) as a dict."""
    if isinstance(baseline, dict):
        report = baseline
    else:
        report = read_json_file(baseline, "Baseline report", "run quantune tune first")
    try:
        float(report["best"]["metric"])
        str(report["metric_name"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserInputError("The baseline is not a quantune report (needs best.metric and metric_name).") from exc
    return report


def check(
    model: nn.Module,
    config: QuantConfig | str | Path,
    calib_data: Iterable[Any],
    eval_data: Sequence[Any] | None,
    baseline: str | Path | dict[str, Any],
    *,
    max_drop: float = 0.0,
    max_size: int | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
) -> CheckResult:
    """Quantize ``model`` with ``config`` and compare it with ``baseline``.

    Args:
        model: the float model.
        config: a :class:`QuantConfig` or the path of its JSON.
        calib_data: calibration batches.
        eval_data: evaluation batches (the metric of the baseline report is used).
        baseline: ``report.json`` path or dict from ``quantune tune``.
        max_drop: accepted metric drop vs the baseline's quantized metric.
        max_size: largest accepted model size in bytes.
        eval_fn: the scorer when the baseline was tuned with ``--eval-fn``.
    """
    started = time.perf_counter()
    report = read_baseline(baseline)
    cfg = config if isinstance(config, QuantConfig) else QuantConfig.load(config)
    metric_name = report["metric_name"]
    qmodel = quantize(model, cfg, calib_data, mode="integer")
    evaluator = Evaluator(list(eval_data or []), "top1" if metric_name == "eval_fn" else metric_name,
                          reference=model.eval(), eval_fn=eval_fn)
    if metric_name == "eval_fn" and eval_fn is None:
        raise UserInputError("The baseline was tuned with --eval-fn: pass the same --eval-fn to check.")
    value = evaluator(qmodel)
    float_value = evaluator(model)
    base = float(report["best"]["metric"])
    higher = bool(report.get("higher_is_better", True))
    limit = base - max_drop if higher else base + max_drop
    ok = value >= limit - 1e-9 if higher else value <= limit + 1e-9
    gates = [Gate("metric", value, limit, ok,
                  f"{metric_name} {value:.4f} is {'below' if higher else 'above'} the limit {limit:.4f} "
                  f"(baseline {base:.4f}, max drop {max_drop})")]
    size = qmodel.size_bytes()
    if max_size is not None:
        gates.append(Gate("size", float(size), float(max_size), size <= max_size,
                          f"model size {size} bytes exceeds {max_size}"))
    return CheckResult(metric_name, value, float_value, base, size, gates, time.perf_counter() - started)
