"""Every docstring example in lfm/ runs (the same as `pytest --doctest-modules lfm`)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import lfm

MODULES = sorted(m.name for m in pkgutil.walk_packages(lfm.__path__, "lfm."))


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {module}"


def test_the_examples_cover_the_engine():
    attempted = {m: doctest.testmod(importlib.import_module(m), optionflags=doctest.ELLIPSIS).attempted
                 for m in ("lfm.methods.recipe", "lfm.resident", "lfm.stream", "lfm.pair", "lfm.neurons", "lfm.device")}
    assert all(attempted.values()), attempted
