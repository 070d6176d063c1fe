"""Invariants of physical compaction, for every registered model."""

import numpy as np
import pytest
import torch

from conftest import randomize_bn
from prunelab import models
from prunelab.counting import count, measure_macs
from prunelab.pruning.compact import compact, expand, fold_batchnorm, load_compact, save_compact
from prunelab.pruning.gates import FixedGate, GatedModel, ScalarGate, attach_gates
from prunelab.pruning.structure import Structure, clean
from prunelab.errors import CheckpointError, PrunelabError

SMALL = {"bar_wrn": {"k": 1}}
CASES = [(n, SMALL.get(n, {})) for n in models.list_models()] + [("resnet20", {"shortcut": "B"}),
                                                                  ("resnet20", {"shortcut": "conv_nobn"})]


def _gated_with_values(net, spec, structure, rng):
    """Scalar gates holding random values in (0.5, 1.5) on alive channels and 0 on dead ones."""
    gates = {}
    for t in spec.tensors:
        v = torch.as_tensor(rng.uniform(0.5, 1.5, t.channels), dtype=torch.float32)
        mask = torch.zeros(t.channels, dtype=torch.bool)
        mask[torch.as_tensor(structure.alive[t.name])] = True
        g = ScalarGate(t.channels)
        g.gate.data.copy_(torch.where(mask, v, torch.zeros_like(v)))
        gates[t.name] = g
    return GatedModel(net, gates, spec)


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}{'-' + '-'.join(map(str, k.values())) if k else ''}" for n, k in CASES])
def test_compact_equals_masked_and_costs_match(name, kw, tmp_path):
    rng = np.random.default_rng(0)
    net = randomize_bn(models.create(name, **kw)).eval()
    spec = models.describe(net)
    structure = Structure.random(spec, rng, keep=(0.2, 0.9), model_kwargs=kw)
    gated = _gated_with_values(net, spec, structure, rng).eval()
    x = torch.randn(2, *spec.input_size)
    small = compact(gated).eval()
    with torch.no_grad():
        y_masked, y_small = gated(x), small(x)
    scale = max(1.0, float(y_masked.abs().max()))
    assert float((y_masked - y_small).abs().max()) / scale < 1e-4
    # the compact model's actual modules cost what the structure says
    counted = count(spec, Structure.from_gates(gated))
    measured = measure_macs(small, spec.input_size)
    assert measured["macs"] == counted.macs and measured["params"] == counted.params
    assert counted.macs < count(spec).macs
    # plan + state dict rebuild the same model from the registry name
    save_compact(small, Structure.from_gates(gated, model_kwargs=kw), tmp_path / "c")
    rebuilt = load_compact(tmp_path / "c")
    with torch.no_grad():
        assert torch.equal(rebuilt(x), y_small)
    # inference export: BN folded into the convs, same outputs
    folded = fold_batchnorm(small)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert float((folded(x) - y_small).abs().max()) / scale < 1e-4


def test_mixed_block_equals_dense_masked_computation():
    """Algorithm 1: gather/scatter blocks equal the dense network with 0/1 masks (different masks for
    the input, projection and delta of each block)."""
    net = randomize_bn(models.create("bar_wrn", k=1)).eval()
    spec = models.describe(net)
    s = Structure.random(spec, np.random.default_rng(3), keep=(0.3, 0.7))
    gated = GatedModel(net, {n: FixedGate.from_alive(spec.tensor(n).channels, a) for n, a in s.alive.items()}, spec).eval()
    small = compact(net, s).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gated(x), small(x), atol=1e-5)
    # the output alive set of a block is the union of its contributors: the trunk width is that union
    for stage, members in enumerate(spec.trunks().values(), start=1):
        u = set().union(*[set(s.alive[m].tolist()) for m in members])
        assert getattr(small, f"layer{stage}")[0].out_channels == len(u)


def test_dead_branches_and_cleanup():
    net = randomize_bn(models.create("bar_wrn", k=1, blocks_per_stage=2)).eval()
    spec = models.describe(net)
    full = {t.name: np.arange(t.channels) for t in spec.tensors}
    s = Structure._make(spec, {**full, "layer1.1.mid": [], "layer2.0.delta": [], "layer3.0.proj": []})
    gated = GatedModel(net, {n: FixedGate.from_alive(spec.tensor(n).channels, a) for n, a in s.alive.items()}, spec).eval()
    small = compact(net, s).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gated(x), small(x), atol=1e-5)  # empty mid: BN's constant is kept exactly
    assert small.layer1[1].branch == "const" and small.layer2[0].branch == "none"
    assert small.layer3[0].shortcut_kind == "zero"
    c = clean(s, spec)
    assert sorted(c.meta["removed_branches"]) == ["layer1.1", "layer2.0"]
    assert len(c.alive["layer1.1.delta"]) == 0 and len(c.alive["layer2.0.mid"]) == 0
    # the counter already leaves out what compaction drops (the convs of a block whose delta is empty;
    # an empty mid's conv2 reads nothing): cleaning does not change MACs, and both equal the measured ones
    assert count(spec, c).macs == count(spec, s).macs == measure_macs(small)["macs"]


def test_disconnecting_structure_is_refused():
    net = models.create("vgg16")
    spec = models.describe(net)
    with pytest.raises(PrunelabError, match="conv5"):
        compact(net, Structure._make(spec, {"conv5": []}))


def test_structure_of_another_model_is_refused(tmp_path):
    spec20 = models.describe(models.create("resnet20"))
    s = Structure.from_counts(spec20, {"layer1.0.mid": 4})
    with pytest.raises(CheckpointError, match="resnet20"):
        compact(models.create("resnet56"), s)
    s.save(tmp_path / "p.json")
    assert Structure.load(tmp_path / "p.json").counts() == s.counts()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        Structure.load(tmp_path / "bad.json")


def test_expand_inverts_compact():
    net = randomize_bn(models.create("bar_wrn", k=1)).eval()
    spec = models.describe(net)
    rng = np.random.default_rng(1)
    s1 = Structure.random(spec, rng, keep=(0.5, 0.9), model_kwargs={"k": 1})
    c1 = compact(net, s1).eval()
    dense = expand(c1, s1).eval()
    s2 = s1.with_alive({n: np.sort(rng.choice(v, max(1, len(v) // 2), replace=False)) for n, v in s1.alive.items()})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(compact(dense, s1).eval()(x), c1(x))
        assert torch.equal(compact(dense, s2).eval()(x), compact(net, s2).eval()(x))


def test_compact_model_trains():
    net = models.create("bar_wrn", k=1)
    spec = models.describe(net)
    small = compact(net, Structure.random(spec, np.random.default_rng(0), keep=(0.3, 0.6))).train()
    loss = small(torch.randn(8, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in small.parameters() if p.requires_grad)


def test_compact_network_of_a_frozen_model_trains_every_parameter():
    """Methods that learn gates on frozen weights (PFS, DDNP) hand a frozen dense network to compaction:
    the compact network is fine-tuned next, so all of its parameters must train."""
    net = models.create("resnet20")
    for p in net.parameters():
        p.requires_grad_(False)
    spec = models.describe(net)
    small = compact(net, Structure.random(spec, np.random.default_rng(0), keep=(0.3, 0.6)))
    assert all(p.requires_grad for p in small.parameters())
    assert not any(p.requires_grad for p in net.parameters())  # the input is not modified


def test_structures_built_in_code_are_validated_like_plans():
    """The constructors go through the same checks as plan files: no silent casting or de-duplication,
    and count refuses a structure of another model as compact does."""
    spec20 = models.describe(models.create("resnet20"))
    for bad in ([1, 1], [16], [-1], np.array([0.0, 1.0]), np.array([True, False]), ["0"]):
        with pytest.raises(CheckpointError, match="layer1.0.mid"):
            Structure._make(spec20, {"layer1.0.mid": bad})
    for bad in (8.0, True, 17, -1):
        with pytest.raises(CheckpointError, match="layer1.0.mid"):
            Structure.from_counts(spec20, {"layer1.0.mid": bad})
    s = Structure._make(spec20, {"layer1.0.mid": np.array([7, 0, 3], dtype=np.int32), "layer1.0.delta": []})
    assert s.alive["layer1.0.mid"].tolist() == [0, 3, 7] and s.alive["layer1.0.mid"].dtype == np.int64
    with pytest.raises(CheckpointError, match="more than once"):
        s.with_alive({"layer1.0.mid": [2, 2]})
    spec56 = models.describe(models.create("resnet56"))
    for use in (lambda: compact(models.create("resnet56"), s), lambda: count(spec56, s)):
        with pytest.raises(CheckpointError, match="resnet20"):
            use()
