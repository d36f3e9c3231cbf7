"""Declared monotone priors: ordered dimensions that the xgboost cost model is held to."""

from __future__ import annotations

import pytest

from quantune.errors import UserInputError
from quantune.search.dimension import Dimension, prior_ordinal
from quantune.search.space import SearchSpace, categorical, ordinal
from quantune.search.xgboost_sampler import XGBoostSampler
from quantune.tune_space import ptq_space


def test_prior_ordinal_orders_values_least_to_most_precise() -> None:
    dim = prior_ordinal("granularity", ["per_channel", "per_tensor"], ("per_tensor", "per_group", "per_channel"))
    assert dim.values == ("per_tensor", "per_channel") and dim.kind == "ordinal" and dim.monotone == 1
    assert prior_ordinal("bits", [8, 4, 6]).values == (4, 6, 8)
    with pytest.raises(UserInputError, match="missing from its prior order"):
        prior_ordinal("granularity", ["per_channel", "per_block"], ("per_tensor", "per_channel"))
    with pytest.raises(UserInputError, match="give the order"):
        prior_ordinal("scheme", ["sym", "asym"])


def test_monotone_needs_an_ordinal_dimension_and_a_sign() -> None:
    with pytest.raises(UserInputError, match="declare it ordinal"):
        Dimension("m", ("a", "b"), "categorical", 1)
    with pytest.raises(UserInputError, match="-1, 0 or \\+1"):
        Dimension("bits", (4, 8), "ordinal", 2)


def test_candidate_spaces_take_priors() -> None:
    candidates = [{"scale": s, "pc": pc, "pct": p} for s in ("float32", "po2") for pc in (True, False)
                  for p in (99.9, 99.99)]
    space = SearchSpace.from_candidates(candidates, priors={"scale": ("po2", "float32"), "pc": (False, True)})
    dims = {d.name: d for d in space.dimensions}
    assert dims["scale"].values == ("po2", "float32") and dims["scale"].monotone == 1
    assert dims["pc"].values == (False, True) and dims["pc"].monotone == 1
    assert dims["pct"].kind == "ordinal" and dims["pct"].monotone == 0
    assert space.size == len(candidates)


def test_declared_priors_constrain_the_cost_model() -> None:
    space = SearchSpace([prior_ordinal("scale", ["po2", "float32"], ("po2", "float32")),
                         ordinal("pct", [99.0, 99.9]), ordinal("w_bits", [4, 8]),
                         ordinal("drop", [0, 1], monotone=-1), categorical("m", ["a", "b"])])
    # Declared (scale +1, drop -1) and guessed from the name (w_bits +1); one-hot m: none.
    assert XGBoostSampler(space)._tree_params(5, 1, 0)["monotone_constraints"] == "(1,0,1,-1,0,0)"
    assert "monotone_constraints" not in XGBoostSampler(space)._tree_params(5, 2, 0)  # metric vs size


def test_ptq_space_declares_precision_priors() -> None:
    dims = {d.name: d for d in ptq_space().dimensions}
    assert dims["w_granularity"].values == ("per_tensor", "per_channel") and dims["w_granularity"].monotone == 1
    assert dims["first_last_8bit"].values == (False, True) and dims["first_last_8bit"].monotone == 1
    assert dims["w_bits"].values == (4, 6, 7, 8) and dims["w_bits"].monotone == 1
    assert dims["gptq"].monotone == 0 and dims["a_method"].kind == "categorical"


@pytest.mark.parametrize(("value", "on", "float_target", "label"),
                         [(False, False, True, ""), (True, True, True, "+adaround"), ("own", True, False, "+adaround(own)")])
def test_adaround_dimension_picks_the_layerwise_target(value, on, float_target, label) -> None:
    from quantune.tune_space import describe_point, point_to_config

    proc = point_to_config({"adaround": value}, ["a", "b", "c"]).procedure
    assert (proc.adaround, proc.layerwise_float_target) == (on, float_target)
    assert describe_point({"adaround": value}).endswith(label) and ("adaround" in describe_point({"adaround": value})) == on


def test_unknown_adaround_value_is_a_clear_error() -> None:
    with pytest.raises(UserInputError, match="adaround"):
        ptq_space({"adaround": (False, "float")})
