"""The public API is documented: every public name and member has a docstring, and
docs/api.md (generated from them by docs/make_api.py) is current."""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "docs"))
import make_api


@pytest.mark.parametrize("module_name", make_api.MODULES)
def test_every_public_name_and_member_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = []
    for name in make_api.public_names(module):
        value = getattr(module, name)
        if (inspect.isclass(value) or callable(value)) and not inspect.getdoc(value):
            missing.append(name)
        if inspect.isclass(value):
            missing += [f"{name}.{member}" for member, _, doc in make_api.members(value) if not doc]
    assert not missing, f"{module_name}: no docstring on {missing}"


def test_the_top_level_package_exports_what_it_lists() -> None:
    import fivetuple

    assert sorted(fivetuple.__all__) == sorted(set(fivetuple.__all__))
    for name in fivetuple.__all__:
        assert hasattr(fivetuple, name), name


def test_docs_api_md_is_current() -> None:
    """Run ``python docs/make_api.py`` after changing a public docstring or signature."""
    assert (ROOT / "docs" / "api.md").read_text() == make_api.render()
