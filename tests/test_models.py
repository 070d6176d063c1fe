import pytest
import torch
import torch.nn as nn

from prunelab import models
from prunelab.errors import ConfigError, UnknownNameError

ALL = models.list_models()


def test_registry_lists_required_models():
    for name in ["resnet20", "resnet32", "resnet56", "resnet110", "vgg16", "mobilenetv2", "bar_wrn",
                 "resnet50_imagenet", "mobilenetv2_imagenet", "mobilenetv3_small_imagenet"]:
        assert name in ALL


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        models.create("resnet21")
    assert "resnet20" in str(e.value) and "Valid" in str(e.value)
    with pytest.raises(ConfigError, match="shortcut"):
        models.create("resnet20", shortcut="Z")
    with pytest.raises(ConfigError, match="no argument"):
        models.create("resnet20", depth=3)


@pytest.mark.parametrize("name", ALL)
def test_spec_covers_every_conv_and_linear(name):
    kw = {"k": 1} if name == "bar_wrn" else {}
    m = models.create(name, **kw)
    spec = models.describe(m)
    mods = {n for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}
    assert mods == {op.name for op in spec.ops if op.kind != "pool"}
    for t in spec.tensors:
        assert isinstance(m.get_submodule(t.module), (nn.BatchNorm2d, nn.Conv2d))
        assert t.area > 0 and t.channels > 0
    for op in spec.ops:  # every read/written tensor exists and has the op's width
        for r in op.reads:
            assert spec.tensor(r).channels == op.in_channels
        if op.writes:
            assert spec.tensor(op.writes).channels == op.out_channels


def test_resnet_structure_and_shortcuts():
    m = models.create("resnet56")
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == 55  # no conv shortcut with option A
    spec = models.describe(m)
    assert [t.slot for t in spec.tensors].count("mid") == 27 and [t.slot for t in spec.tensors].count("delta") == 27
    assert "stem" not in spec  # the option-A trunk is never pruned
    b = models.describe(models.create("resnet20", shortcut="B"))
    assert {"stem", "proj"} <= set(b.slots()) and len(b.trunks()) == 3
    out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_bar_wrn_gated_tensors():
    spec = models.describe(models.create("bar_wrn"))
    assert len(spec.tensors) == 28 and sum(t.channels for t in spec.tensors) == 12112
    assert [t.slot for t in spec.tensors].count("proj") == 3
    # every stage's trunk: one projection plus its 4 deltas
    assert all(len(v) == 5 for v in spec.trunks().values())


def test_pfs_gate_counts():
    """PFS 'Channel Gates Location': 9 / 27 / 13 gates for ResNet-20 / ResNet-56 / VGG-16."""
    assert len(models.describe(models.create("resnet20")).select("mid")) == 9
    assert len(models.describe(models.create("resnet56")).select("mid")) == 27
    assert len(models.describe(models.create("vgg16")).select("conv")) == 13
    mb = models.describe(models.create("mobilenetv2"))
    assert len(mb.select(["stem", "expand", "final"])) == 18  # stem + 16 expansions + final 1x1


def test_builders_take_width_and_classes():
    m = models.create("resnet20", width=32, num_classes=100)
    assert m.fc.out_features == 100 and m.conv1.out_channels == 32
    assert models.create("vgg16", width=1.25).classifier.in_features == 640
