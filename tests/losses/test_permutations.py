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


def test_contract_defaults_messages_generator_and_small_batches():
    """The default kind is ``all``; the errors name the culprit exactly; a seeded generator is
    what draws the permutations (the argsort of its uniform keys, by hand); the masks are
    bool; a batch of two has exactly one derangement, (1, 0)."""
    import pytest
    g = torch.Generator().manual_seed(7)
    perms, valid = sample_permutations(5, 4, generator=g)
    keys = torch.rand(4, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(perms, keys.argsort(dim=1)) and perms.dtype == torch.int64
    assert valid.dtype == torch.bool and valid.all()
    again, _ = sample_permutations(5, 4, "all", generator=torch.Generator().manual_seed(7))
    assert torch.equal(again, perms)
    with pytest.raises(ValueError, match=r"^unknown permutation kind 'nope'; valid: all, derangement, different_label$"):
        sample_permutations(3, 1, "nope")
    with pytest.raises(ValueError, match=r"^the different_label permutation needs labels$"):
        sample_permutations(3, 1, "different_label")
    two, valid2 = sample_permutations(2, 50, "derangement", generator=torch.Generator().manual_seed(0))
    assert (two == torch.tensor([1, 0])).all() and valid2.dtype == torch.bool and valid2.all()
    one, valid1 = sample_permutations(1, 3, "derangement")
    assert one.tolist() == [[0], [0], [0]] and valid1.dtype == torch.bool and not valid1.any()
    # different_label: the mask marks exactly the positions whose partner has another label
    labels = torch.tensor([0, 0, 1, 1])
    p, v = sample_permutations(4, 8, "different_label", labels, generator=torch.Generator().manual_seed(3))
    assert v.dtype == torch.bool
    for row, mask in zip(p.tolist(), v.tolist()):
        assert mask == [labels[j] != labels[i] for i, j in enumerate(row)]
    # a derangement redraw uses the same generator: the seed fixes the result
    a, _ = sample_permutations(6, 5, "derangement", generator=torch.Generator().manual_seed(11))
    b, _ = sample_permutations(6, 5, "derangement", generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b) and not (a == torch.arange(6)).any()
