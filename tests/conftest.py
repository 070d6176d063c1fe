import os

import numpy as np
import pytest
import torch

os.environ.setdefault("PRUNELAB_SCALE", "ci")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def cifar():
    from prunelab.data.cifar import load_cifar10

    return load_cifar10()


def randomize_bn(model, seed=0):
    """Non-trivial BN statistics and affine parameters (bounded, so deep nets stay finite)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model
