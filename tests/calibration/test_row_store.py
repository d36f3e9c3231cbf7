"""RowStore: parts land in one buffer in order; other shapes stay loose; gather keeps key order."""

from __future__ import annotations

import torch

from quantune.calibration.row_store import RowStore


def test_parts_of_one_shape_are_gathered_as_a_view_of_the_buffer() -> None:
    store = RowStore(5)
    a, b = torch.randn(2, 3, 4), torch.randn(3, 3, 4)
    store.put(0, a)
    store.put(1, b)
    out = store.gather([0, 1])
    torch.testing.assert_close(out, torch.cat([a, b]))
    assert out.data_ptr() == store.buffer.data_ptr()  # no copy
    a.add_(1.0)  # the store holds copies, not the caller's tensors
    torch.testing.assert_close(store.get(0), a - 1.0)


def test_other_shapes_and_overflow_stay_loose_and_gather_in_key_order() -> None:
    store = RowStore(3)
    first, odd, late = torch.randn(2, 4), torch.randn(1, 6), torch.randn(2, 4)
    store.put(0, first)
    store.put(1, odd)  # another shape
    store.put(2, late)  # does not fit: 2 + 2 > 3 rows
    assert store.keys() == [0, 1, 2] and 1 in store and 3 not in store
    torch.testing.assert_close(store.get(1), odd)
    torch.testing.assert_close(store.gather([0, 2]), torch.cat([first, late]))


def test_an_empty_capacity_keeps_every_part_loose() -> None:
    store = RowStore(0)
    part = torch.randn(2, 2)
    store.put(7, part)
    assert store.buffer is None
    torch.testing.assert_close(store.gather([7]), part)
