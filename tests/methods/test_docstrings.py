"""Method docstrings: the formula in the first paragraph, departures and optimizer
advice under ``Notes:``, and no prose copy of the ``reference`` attribute."""

from __future__ import annotations

import inspect

import pytest

from mmbalance.methods import REGISTRY


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_docstring_shape(name):
    cls = REGISTRY[name]
    doc = inspect.getdoc(cls)
    first, _, rest = doc.partition("\n\n")
    assert "``" in first, f"{name}: the first paragraph should state the formula"
    notes = rest.find("Notes:")
    for word in ("Optimizer:", "official code uses", "Differences from the official"):
        at = rest.find(word)
        assert at == -1 or (notes != -1 and at > notes), f"{name}: {word!r} belongs under Notes:"
    assert "Reference:" not in doc and cls.reference not in doc, f"{name}: the reference is an attribute"
