"""Permutation kinds: valid permutations, fixed points, label masks, documented empty sets."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbalance.losses import sample_permutations


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.sampled_from(["all", "derangement", "different_label"]),
       st.integers(0, 2**16))
def test_every_kind_returns_permutations_or_documented_empty_set(batch, num, kind, seed):
    torch.manual_seed(seed)
    labels = torch.randint(0, 3, (batch,))
    perms, valid = sample_permutations(batch, num, kind, labels)
    assert perms.shape == valid.shape == (num, batch)
    for row in perms:
        assert sorted(row.tolist()) == list(range(batch))
    if kind == "derangement":
        if batch == 1:
            assert not valid.any()  # no derangement of one element: the empty set
        else:
            assert valid.all() and not (perms == torch.arange(batch)).any()
    if kind == "different_label":
        assert torch.equal(valid, labels[perms] != labels[None, :])
    if kind == "all":
        assert valid.all()


def test_single_class_different_label_is_empty():
    perms, valid = sample_permutations(5, 3, "different_label", torch.zeros(5, dtype=torch.long))
    assert not valid.any()


def test_uniform_over_permutations_of_three():
    torch.manual_seed(0)
    perms, _ = sample_permutations(3, 6000, "all")
    counts = torch.unique(perms, dim=0, return_counts=True)[1]
    assert len(counts) == 6 and counts.min() > 850 and counts.max() < 1150  # 1000 expected each
    der, _ = sample_permutations(3, 2000, "derangement")
    assert len(torch.unique(der, dim=0)) == 2  # (1,2,0) and (2,0,1)
