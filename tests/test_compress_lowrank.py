"""Low-rank factorization: exact at full rank, the best rank-r approximation below it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lepton_ray.compress.pipeline import Compression
from lepton_ray.compress.lowrank import factorize
from lepton_ray.config import CompressionConfig, LowRankConfig
from lepton_ray.models.zoo import mlp


def _product(factors: nn.Sequential) -> torch.Tensor:
    return (factors[1].weight.flatten(1) @ factors[0].weight.flatten(1)).double()


def test_full_rank_linear_factorization_matches_the_dense_output():
    torch.manual_seed(0)
    dense = nn.Linear(12, 7)
    inputs = torch.randn(5, 12)
    assert torch.allclose(factorize(dense, 7)(inputs), dense(inputs), atol=1e-5)


def test_full_rank_strided_1x1_conv_factorization_matches_the_dense_output():
    torch.manual_seed(0)
    dense = nn.Conv2d(6, 10, 1, stride=2, bias=True)
    inputs = torch.randn(2, 6, 9, 9)
    assert torch.allclose(factorize(dense, 6)(inputs), dense(inputs), atol=1e-5)


def test_truncated_factorization_error_equals_the_discarded_singular_values():
    torch.manual_seed(0)
    dense = nn.Linear(20, 16)
    singular_values = torch.linalg.svdvals(dense.weight.detach().double())
    error = torch.linalg.matrix_norm(_product(factorize(dense, 5)) - dense.weight.detach().double())
    assert error.item() == pytest.approx(singular_values[5:].square().sum().sqrt().item(), rel=1e-5)


def test_compressor_factorizes_only_layers_it_makes_smaller_and_keeps_num_classes():
    torch.manual_seed(0)
    model = mlp((1, 8, 8), 10, hidden=[48])
    compression = Compression(CompressionConfig(low_rank=LowRankConfig(rank_ratio=0.6)), 3)
    factorized = compression.prepare(model, torch.randn(2, 1, 8, 8))
    assert isinstance(factorized[1], nn.Linear), "64x48 at rank 29: 29 * 112 = 3248 > 3072 weights, kept dense"
    assert isinstance(factorized[4], nn.Sequential), "48x10 at rank 6: 6 * 58 = 348 < 480 weights, factorized"
    assert factorized[4][0].out_features == 6 and factorized[4][1].out_features == 10
    assert factorized(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_full_rank_ratio_leaves_the_model_dense():
    model = mlp((1, 8, 8), 10, hidden=[48])
    compression = Compression(CompressionConfig(low_rank=LowRankConfig(rank_ratio=1.0)), 3)
    assert all(not isinstance(m, nn.Sequential) for m in list(compression.prepare(model, torch.randn(2, 1, 8, 8)))[1:])
