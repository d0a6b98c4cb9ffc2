"""BatchNorm statistics across sites: re-estimation on a site's data and exact pooling."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from shared.ml.batchnorm import BN_MOMENTUM, pool, recalibrate, statistics

pytestmark = pytest.mark.unit


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def _features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The BatchNorm layer's input, per channel: [channels, values]."""
    with torch.no_grad():
        return net[0](x).transpose(0, 1).reshape(3, -1)


def test_recalibration_gives_the_data_statistics_of_the_current_weights() -> None:
    net = _net()
    x = torch.randn(40, 1, 8, 8) * 2 + 1
    net(x[:2])  # materialize the lazy layer
    net[1].running_mean.fill_(123.0)  # stale statistics from elsewhere
    loader = DataLoader(TensorDataset(x, torch.zeros(40)), batch_size=40)
    assert recalibrate(net, loader, torch.device("cpu")) == 40
    feats = _features(net, x)
    torch.testing.assert_close(net[1].running_mean, feats.mean(dim=1))
    torch.testing.assert_close(net[1].running_var, feats.var(dim=1, unbiased=True))
    assert net[1].momentum == BN_MOMENTUM and not net.training


def test_pooling_equals_the_statistics_of_the_pooled_data() -> None:
    net = _net()
    parts = [torch.randn(n, 1, 8, 8) * s + m for n, s, m in ((30, 1.0, 0.0), (50, 2.0, 3.0), (20, 0.5, -1.0))]
    net(parts[0][:2])
    stats, weights = [], []
    for x in parts:
        f = _features(net, x)
        # a site's statistics: its data's mean and (population) variance
        stats.append({"1.running_mean": f.mean(dim=1), "1.running_var": f.var(dim=1, unbiased=False)})
        weights.append(float(len(x)))
    pooled = pool(stats, weights)
    everything = _features(net, torch.cat(parts))
    torch.testing.assert_close(pooled["1.running_mean"], everything.mean(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        pooled["1.running_var"], everything.var(dim=1, unbiased=False), rtol=1e-5, atol=1e-5
    )
    # the plain average FedAvg would take misses the spread between the sites' means
    naive = sum(s["1.running_var"] * w for s, w in zip(stats, weights, strict=True)) / sum(weights)
    assert (
        bool((naive <= pooled["1.running_var"]).all())
        and float((pooled["1.running_var"] - naive).max()) > 0.3
    )


def test_statistics_are_keyed_like_the_state_dict() -> None:
    net = _net()
    net(torch.randn(2, 1, 8, 8))
    keys = set(statistics(net))
    assert keys == {"1.running_mean", "1.running_var"} and keys <= set(net.state_dict())
