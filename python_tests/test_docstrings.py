"""Docstrings that state facts about the operators, checked against the operators themselves."""
import re

import pytest
import torch

import rkd_ext.ops


@pytest.mark.parametrize("name", rkd_ext.ops.OPS)
def test_ops_docstring_names_each_saved_matrix(name):
    # The second output of a forward op is the float64 matrix its backward
    # reuses; the module docstring must call it by its schema name.
    saved = getattr(torch.ops.rkd_ext, name).default._schema.returns[1].name
    saved = re.sub(r"_student$", "", saved)
    assert f"``{saved}``" in rkd_ext.ops.__doc__, f"{name} returns {saved!r}"
