from __future__ import annotations

import torch

from tieconv.torchapi.storage import extent, overlap_groups, same_view, shares_memory, view_key


def test_views_and_offsets_of_one_storage():
    base = torch.arange(12.0)
    assert same_view(base[:6], base.view(2, 6)[0])  # two routes to the same elements
    assert not same_view(base[:6], base[:6].view(2, 3))  # same bytes, another shape
    assert not same_view(base[:6], base[1:7])  # another offset
    assert shares_memory(base[:6], base[1:7]) and shares_memory(base, base[3:4])
    matrix = base.view(3, 4)
    assert shares_memory(matrix, matrix.t()) and not same_view(matrix, matrix.t())
    assert not same_view(base, base.view(torch.int32))  # same bytes read as another dtype
    assert view_key(base[2:5]) == view_key(base.view(2, 6)[0, 2:5])


def test_disjoint_halves_share_nothing_overlapping_ones_do():
    base = torch.zeros(12)
    assert not shares_memory(base[:6], base[6:])
    assert shares_memory(base[:7], base[6:])
    assert extent(base[6:]).start - extent(base[:6]).start == 24
    assert shares_memory(base[::2], base[1::2])  # interleaved strides: conservatively shared, as safetensors says


def test_two_storage_objects_over_the_same_bytes_share():
    buffer = bytearray(48)
    a = torch.frombuffer(buffer, dtype=torch.float32)
    b = torch.frombuffer(buffer, dtype=torch.float32, offset=24)
    assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
    assert shares_memory(a, b) and not same_view(a, b)


def test_meta_tensors_share_only_their_own_storage():
    with torch.device("meta"):
        a, b = torch.empty(4, 4), torch.empty(4, 4)
        weight = torch.nn.Parameter(torch.empty(4, 4))
    assert a.data_ptr() == b.data_ptr() == 0  # why data_ptr cannot decide
    assert not shares_memory(a, b) and not same_view(a, b)
    assert same_view(a, a.view(4, 4)) and shares_memory(a, a.view(16)[4:8])
    assert not shares_memory(a[:2], a[2:])
    assert same_view(weight, weight.detach())  # a tied meta model's state dict: one storage
    assert not shares_memory(a, torch.empty(4, 4))  # meta and CPU never share


def test_empty_tensors_share_nothing():
    e, f = torch.empty(0), torch.empty(0)
    assert e.data_ptr() == f.data_ptr() == 0
    assert not shares_memory(e, f) and not same_view(e, f)


def test_overlap_groups_follow_the_input_order():
    base = torch.zeros(12)
    other = torch.zeros(3)
    tensors = {"c": base[8:], "other": other, "a": base[:5], "b": base[4:9], "alone": base[10:10]}
    assert overlap_groups(tensors) == [["c", "a", "b"], ["other"], ["alone"]]
    halves = {"low": base[:6], "high": base[6:]}
    assert overlap_groups(halves) == [["low"], ["high"]]


def test_module_examples():
    import doctest

    import tieconv.torchapi.storage

    result = doctest.testmod(tieconv.torchapi.storage)
    assert result.failed == 0 and result.attempted > 0
