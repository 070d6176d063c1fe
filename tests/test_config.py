import pytest

from prunelab.config import SCALES, load_config, parse_set, resolve_dict
from prunelab.errors import ConfigError


def test_bundled_config_scales():
    ci = load_config("resnet20", "ci")
    cpu = load_config("resnet20", "cpu")
    paper = load_config("resnet20", "paper")
    assert ci.train.epochs < cpu.train.epochs < paper.train.epochs
    assert ci.data.train_per_class and cpu.data.train_per_class is None
    assert {ci.scale, cpu.scale, paper.scale} == set(SCALES)


def test_set_overrides_are_typed():
    cfg = load_config("resnet20", "cpu", ["train.epochs=30", "optim.lr=0.1", "model.kwargs.width=32",
                                          "train.keep_epochs=[0,1,2]"])
    assert cfg.train.epochs == 30 and cfg.optim.lr == 0.1 and cfg.model.kwargs == {"width": 32}
    assert cfg.train.keep_epochs == [0, 1, 2]
    assert parse_set(["a.b=x"]) == {"a": {"b": "x"}}
    assert parse_set(["method.lambda=3e-4"]) == {"method": {"lambda": 3e-4}}  # YAML 1.1 would say "3e-4"


@pytest.mark.parametrize("sets,needle", [
    (["optim.lr=0"], "optim.lr must be > 0"),
    (["train.epochs=0"], "train.epochs must be >= 1"),
    (["train.epoch=3"], "Did you mean 'epochs'"),
    (["model.name=resnet21"], "unknown model 'resnet21'"),
    (["data.batch_size=abc"], "must be a number"),
    (["train.amp=fp8"], "train.amp"),
    (["schedule.name=linear"], "schedule.name"),
])
def test_bad_values_give_one_line(sets, needle):
    with pytest.raises(ConfigError) as e:
        load_config("resnet20", "ci", sets)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_scale_and_config():
    with pytest.raises(ConfigError, match="scale"):
        resolve_dict({}, "huge")
    with pytest.raises(ConfigError, match="Bundled"):
        load_config("no-such-config")
