"""SparsitySpec parsing/validation and linear-scope selection."""

import pytest

from optima_jax.errors import OptimaError
from optima_jax.sparsity import SparsitySpec, select_linears


@pytest.mark.parametrize("x,ratio", [(0.5, 0.5), ("0.5", 0.5), ("50%", 0.5), (" 60 % ", 0.6), ("0.7", 0.7)])
def test_parse_unstructured(x, ratio):
    s = SparsitySpec.parse(x)
    assert s.kind == "unstructured" and abs(s.ratio - ratio) < 1e-12
    assert SparsitySpec.parse(s) is s


@pytest.mark.parametrize("x,n,m", [("2:4", 2, 4), ("4:8", 4, 8), (" 1 : 4 ", 1, 4)])
def test_parse_nm(x, n, m):
    s = SparsitySpec.parse(x)
    assert (s.kind, s.n, s.m) == ("nm", n, m)
    assert abs(s.ratio - (1 - n / m)) < 1e-12
    assert s.expected_pruned_per_row(8 * m) == 8 * (m - n)
    assert hash(s) == hash(SparsitySpec.parse(x))  # usable as a jit static argument


@pytest.mark.parametrize(
    "bad", [0, 1, 1.0, -0.1, 1.5, "0", "100%", "abc", "2:", "4:2", "4:4", "0:4", "nan", None, True, [0.5]]
)
def test_bad_specs(bad):
    with pytest.raises(OptimaError):
        SparsitySpec.parse(bad)


def test_bad_specs_are_value_errors_with_message():
    with pytest.raises(ValueError, match="1 <= N < M"):
        SparsitySpec.parse("5:4")


def test_validate_for_names_layer():
    s = SparsitySpec.parse("2:4")
    s.validate_for(128, "model.layers.0.mlp.up_proj")
    with pytest.raises(OptimaError, match=r"model\.layers\.0\.mlp\.up_proj.*not divisible by M=4"):
        s.validate_for(130, "model.layers.0.mlp.up_proj")
    SparsitySpec.parse(0.5).validate_for(130, "x")


def test_expected_pruned_per_row():
    assert SparsitySpec.parse(0.5).expected_pruned_per_row(255) == 127
    assert SparsitySpec.parse(0.6).expected_pruned_per_row(256) == int(256 * 0.6)
    assert SparsitySpec.parse("1:4").expected_pruned_per_row(16) == 12


def test_select_linears():
    from optima_jax.models.hf_names import LINEAR_NAMES

    names = list(LINEAR_NAMES)
    mlp = {"mlp.gate_proj": "out", "mlp.up_proj": "out", "mlp.down_proj": "in"}
    assert select_linears(names, "all", mlp) == names
    assert select_linears(names, "mlp", mlp) == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert select_linears(["attn.c", "ffn.a", "ffn.b"], "mlp", ["ffn.a", "ffn.b"]) == ["ffn.a", "ffn.b"]
    with pytest.raises(OptimaError, match="scope"):
        select_linears(names, "attn", mlp)
