"""Search space: encoding, enumeration, sampling, neighbours, projection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantune.errors import UserInputError
from quantune.search.neighbourhood import mutate, neighbours, project
from quantune.search.space import SearchSpace, categorical, config_key, ordinal


def _space() -> SearchSpace:
    return SearchSpace(
        [
            ordinal("bits", [2, 4, 8]),
            categorical("scheme", ["sym", "asym"]),
            categorical("clip", [None, {"pct": 99.9}, [1, 2]]),
        ]
    )


def test_size_and_enumeration_cover_the_product() -> None:
    space = _space()
    configs = list(space.enumerate())
    assert space.size == len(configs) == 18
    assert len({config_key(c) for c in configs}) == 18
    assert configs[0] == {"bits": 2, "scheme": "sym", "clip": None}
    assert list(space.enumerate(limit=5)) == configs[:5]


def test_encoding_is_ordinal_value_then_one_hot() -> None:
    space = _space()
    vec = space.encode({"bits": 8, "scheme": "asym", "clip": {"pct": 99.9}})
    assert vec.tolist() == [8.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert space.n_features == 6 == len(space.feature_names())
    assert space.encode_many([]).shape == (0, 6)


def test_non_numeric_ordinal_encodes_rank() -> None:
    space = SearchSpace([ordinal("size", ["small", "medium", "large"])])
    assert space.encode({"size": "large"}).tolist() == [2.0]


def test_validation_errors_say_what_is_wrong() -> None:
    space = _space()
    with pytest.raises(UserInputError, match="not a value"):
        space.validate({"bits": 3, "scheme": "sym", "clip": None})
    with pytest.raises(UserInputError, match="lacks"):
        space.validate({"bits": 2, "scheme": "sym"})
    with pytest.raises(UserInputError, match="unknown"):
        space.validate({"bits": 2, "scheme": "sym", "clip": None, "x": 1})
    with pytest.raises(UserInputError):
        SearchSpace([ordinal("a", [1]), ordinal("a", [2])])
    with pytest.raises(UserInputError):
        categorical("a", [1, 1])


def test_candidate_space_is_exactly_the_list() -> None:
    rows = [
        {"gptq": False, "act_order": False, "bits": 4},
        {"gptq": True, "act_order": False, "bits": 4},
        {"gptq": True, "act_order": True, "bits": 8},
    ]
    space = SearchSpace.from_candidates(rows)
    assert space.size == 3
    assert space.dimension("bits").kind == "ordinal"
    assert space.dimension("gptq").kind == "categorical"
    assert space.contains(rows[2])
    assert not space.contains({"gptq": False, "act_order": True, "bits": 4})
    assert list(space.enumerate()) == rows
    rng = np.random.default_rng(0)
    assert all(space.contains(c) for c in space.sample(rng, 20))


def test_random_sampling_is_seeded_and_in_space() -> None:
    space = _space()
    a = space.sample(np.random.default_rng(3), 10)
    b = space.sample(np.random.default_rng(3), 10)
    assert a == b
    assert all(space.contains(c) for c in a)


def test_neighbours_change_one_dimension() -> None:
    space = _space()
    origin = {"bits": 4, "scheme": "sym", "clip": None}
    near = neighbours(space, origin)
    # bits: 2 and 8 (one ordinal move each within radius 1), scheme: 1, clip: 2
    assert len(near) == 5
    for c in near:
        assert sum(c[k] != origin[k] for k in origin) == 1


def test_projection_and_mutation_stay_on_candidates() -> None:
    rows = [{"a": a, "b": b} for a in range(5) for b in range(5) if (a + b) % 2 == 0]
    space = SearchSpace.from_candidates(rows)
    rng = np.random.default_rng(0)
    projected = project(space, {"a": 1, "b": 2}, rng)
    assert space.contains(projected)
    assert abs(projected["a"] - 1) + abs(projected["b"] - 2) == 1
    for _ in range(20):
        assert space.contains(mutate(space, rows[0], rng, n_changes=2))
    # No candidate is within 0.25 of (0, 0): the nearest ones (0.5 away) are returned.
    near = neighbours(space, {"a": 0, "b": 0}, radius=0.25)
    assert sorted((c["a"], c["b"]) for c in near) == [(0, 2), (1, 1), (2, 0)]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=4),
    kinds=st.lists(st.sampled_from(["categorical", "ordinal"]), min_size=4, max_size=4),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_space_invariants(sizes: list[int], kinds: list[str], seed: int) -> None:
    dims = [
        ordinal(f"d{i}", [2**j for j in range(n)]) if kinds[i] == "ordinal"
        else categorical(f"d{i}", [f"v{j}" for j in range(n)])
        for i, n in enumerate(sizes)
    ]
    space = SearchSpace(dims)
    configs = list(space.enumerate())
    assert len(configs) == space.size == int(np.prod(sizes))
    features = space.encode_many(configs)
    assert features.shape == (space.size, space.n_features)
    assert len({row.tobytes() for row in features}) == space.size  # encoding is injective
    rng = np.random.default_rng(seed)
    origin = configs[int(rng.integers(space.size))]
    assert project(space, origin, rng) == origin
    near = neighbours(space, origin)
    assert all(space.contains(c) and c != origin for c in near)
    assert len({config_key(c) for c in near}) == len(near)
    assert space.contains(mutate(space, origin, rng, n_changes=2))
