"""Every malformed grid is refused with one line that names the key and, in a file, its line."""

from __future__ import annotations

import pytest

from rethink.errors import SpecError
from rethink.runner.grid import parse_grid

MALFORMED = [
    # YAML itself: file, line, column, problem; no multi-line "in <unicode string>" block
    ("name: x\nmodel: [mlp1x512\n", "grid.yaml line 3 column 1: invalid YAML: expected ',' or ']'"),
    ("name: x\n\tmodel: mlp1x512\n", "grid.yaml line 2 column 1: invalid YAML: found character '\\t'"),
    ("name: x\n---\nname: y\n", "invalid YAML: but found another document"),
    ("name: x\nseed: 1\nseed: 2\n", "grid.yaml line 3: duplicate key 'seed' (first on line 2)"),
    # the top level
    ("- name: x\n", "grid.yaml: a grid is a mapping with keys name, dataset"),
    ("", "grid.yaml: name is required"),
    ("model: mlp1x512\n", "grid.yaml: name is required"),
    ("name: Fig 1\n", "grid.yaml line 1: name must match [a-z0-9_-]+"),
    ("name: x\nmodels: [mlp1x512]\n", "grid.yaml line 2: unknown key 'models'; valid: name, dataset, data, model,"),
    # unknown names on an axis
    ("name: x\ndataset: [cifar10, mnist]\n", "grid.yaml line 2: dataset[1]: unknown dataset 'mnist'; valid: cifar10"),
    ("name: x\nmodel:\n  - mlp1x512\n  - vgg16\n", "grid.yaml line 4: model[1]: unknown model 'vgg16'; valid: mlp1x512"),
    ("name: x\nmodel: [5]\n", "model[0]: a model is a name or a mapping"),
    ("name: x\nmodel:\n  - name: mlp1x512\n    depth: 3\n", "grid.yaml line 4: model[0]: unknown key 'depth'; valid: name, width"),
    ("name: x\nmodel: [{width: 2}]\n", "model[0]: a model mapping needs a name"),
    ("name: x\nmodel: [{name: mlp1x512, width: [1, -2]}]\n", "model[0]: width must be > 0, got -2"),
    ("name: x\ncorruption: [none, blur]\n", "corruption[1]: unknown corruption 'blur'; valid: none, labels"),
    ("name: x\ncorruption:\n  - kind: labels\n    levels: 0.5\n", "line 4: corruption[0]: unknown key 'levels'; valid: kind, level"),
    ("name: x\nregularizer:\n  - none\n  - weightdecay: 0.1\n",
     "grid.yaml line 4: regularizer[1]: unknown regularizer 'weightdecay'; valid: weight_decay"),
    ("name: x\nregularizer: [5]\n", "regularizer[0]: a regularizer is none or a mapping of settings"),
    ("name: x\ntrain:\n  epochs: 3\n  epoch: 4\n", "grid.yaml line 4: unknown train key 'epoch'; valid: epochs, batch_size"),
    ("name: x\ndata: {trainsize: 5}\n", "unknown data key 'trainsize'; valid: train_size, test_size"),
    ("name: x\nresources: {memory: 4}\n", "unknown resources key 'memory'; valid: gpus, cpus"),
    # levels and other values out of range
    ("name: x\ncorruption:\n  - none\n  - {kind: labels, level: 2}\n",
     "grid.yaml line 4: corruption[1]: level of labels must be in [0, 1], got 2"),
    ("name: x\ncorruption:\n  - kind: label_noise\n    level:\n      - 0.5\n      - -0.1\n",
     "grid.yaml line 6: corruption[0]: level of label_noise must be in [0, 1], got -0.1"),
    ("name: x\ncorruption: [{kind: labels, level: abc}]\n", "level of labels must be a number, got 'abc'"),
    ("name: x\ncorruption: [labels]\n", "corruption[0]: corruption 'labels' needs a level"),
    ("name: x\ncorruption: [{kind: gaussian, level: 0.5}]\n", "corruption 'gaussian' applies to every image and takes no level"),
    ("name: x\nregularizer: [{dropout: 1.5}]\n", "regularizer[0]: dropout must be in [0, 1), got 1.5"),
    ("name: x\ndata: {crop: 40}\n", "data.crop=40 is larger than the 32-pixel images"),
    ("name: x\ntrain: {lr: -1}\n", "train.lr must be > 0"),
    ("name: x\nresources: {gpus: -1}\n", "grid.yaml line 2: resources.gpus must be a number >= 0"),
    ("name: x\nresources: {gpus: 1.5}\n", "resources.gpus above 1 must be a whole number"),
    # empty axes and duplicates
    ("name: x\nmodel: []\n", "grid.yaml line 2: model is empty"),
    ("name: x\nseed:\n", "seed is empty"),
    ("name: x\nmodel: [mlp1x512, mlp1x512]\n", "model[1]: duplicate model mlp1x512"),
    ("name: x\ncorruption: [gaussian, gaussian]\n", "corruption[1]: duplicate corruption gaussian"),
    ("name: x\ncorruption: [{kind: labels, level: [0.2, 0.5]}, labels:0.5]\n", "duplicate corruption labels:0.5"),
    ("name: x\ncorruption: [{kind: labels, level: [0.5, 0.5]}]\n", "duplicate level 0.5"),
    ("name: x\nregularizer: [none, {weight_decay: 0}]\n", "regularizer[1]: duplicate regularizer none"),
    ("name: x\nseed: [0, 1, 0]\n", "seed[2]: duplicate seed 0 (already in seed[0])"),
    # wrong types
    ("name: x\nseed: abc\n", "grid.yaml line 2: seed must be an integer, got 'abc'"),
    ("name: x\nseed: [-1]\n", "seed[0]: seed must be an integer >= 0"),
    ("name: x\ntrain: {epochs: 1.5}\n", "grid.yaml line 2: train.epochs must be an integer, got 1.5"),
    ("name: x\ntrain: {epochs: [1, 2]}\n", "train.epochs takes one value, not a list"),
    ("name: x\ntrain: 5\n", "train must be a mapping of epochs, batch_size"),
    ("name: x\ndata: {whiten: maybe}\n", "data.whiten must be true or false, got 'maybe'"),
    ("name: x\nwidth: [1, 1.0]\n", "width[1]: duplicate width 1"),
]


@pytest.mark.parametrize("text, fragment", MALFORMED)
def test_malformed_grid_is_one_line_naming_the_key(text: str, fragment: str):
    with pytest.raises(SpecError) as info:
        parse_grid(text, source="grid.yaml")
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and "Traceback" not in message


def test_every_bad_field_is_listed_on_one_line_in_file_order():
    with pytest.raises(SpecError) as info:
        parse_grid("name: X\nmodel: vgg\nseed: abc\n", source="grid.yaml")
    message = str(info.value)
    assert message.startswith("3 problems: grid.yaml line 1: name must match") and "\n" not in message
    assert message.index("line 2: unknown model 'vgg'") < message.index("line 3: seed must be an integer")


@pytest.mark.parametrize(
    "overrides, fragment",
    [({"train.epoch": 3}, "unknown override 'train.epoch'; valid train keys: epochs, batch_size"),
     ({"bogus": 1}, "unknown override 'bogus'; valid: name, dataset"),
     ({"train.epochs": 1.5}, "override: train.epochs must be an integer, got 1.5"),
     ({"seed": "abc"}, "override: seed must be an integer, got 'abc'"),
     ({"model": ["mlp1x512", "nope"]}, "override: model[1]: unknown model 'nope'"),
     ({"corruption": [{"kind": "labels", "level": 3}]}, "override: corruption[0]: level of labels must be in [0, 1]"),
     ({"name": "Bad Name"}, "override: name must match"),
     ({"resources": {"gpus": -2}}, "override: resources.gpus must be a number >= 0")],
)
def test_bad_overrides_are_refused_the_same_way(overrides: dict, fragment: str):
    with pytest.raises(SpecError) as info:
        parse_grid("name: x\ntrain: {epochs: 3}\n", overrides, source="grid.yaml")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_set_flags_become_overrides():
    from rethink.runner.grid import parse_overrides

    overrides = parse_overrides(["train.epochs=5", "seed=[0, 1]", "corruption=[none, labels:0.5]", "model=mlp3x512"])
    assert overrides == {"train.epochs": 5, "seed": [0, 1], "corruption": ["none", "labels:0.5"], "model": "mlp3x512"}
    assert len(parse_grid("name: x\n", overrides).runs) == 4
    for bad, fragment in (["epochs"], "--set takes KEY=VALUE"), (["seed=[0,"], "--set seed: value is not valid YAML"), \
            (["seed=1", "seed=2"], "given twice"):
        with pytest.raises(SpecError, match=None) as info:
            parse_overrides(bad)
        assert fragment in str(info.value) and "\n" not in str(info.value)
