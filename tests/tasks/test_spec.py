"""Run specs: validation refuses bad values with one sentence; run ids are content hashes."""

from __future__ import annotations

import dataclasses

import pytest

from rethink.errors import SpecError
from rethink.tasks.spec import (
    CorruptionSpec, DataSpec, RegularizerSpec, RunSpec, TrainSpec, parse_corruption, parse_regularizer,
)


def test_run_id_is_a_hash_of_the_whole_config():
    a = RunSpec()
    assert a.run_id == RunSpec().run_id and len(a.run_id) == 16
    assert a.run_id != dataclasses.replace(a, seed=1).run_id
    assert a.run_id != dataclasses.replace(a, train=TrainSpec(lr=0.02)).run_id
    assert RunSpec.from_dict(a.to_dict()) == a


@pytest.mark.parametrize(
    "text, kind, level",
    [("none", "none", 0.0), ("labels:0.5", "labels", 0.5), ("label_noise:1", "label_noise", 1.0),
     ("gaussian", "gaussian", 1.0), ("shuffled_pixels", "shuffled_pixels", 1.0)],
)
def test_parse_corruption(text, kind, level):
    assert parse_corruption(text) == CorruptionSpec(kind, level)


@pytest.mark.parametrize(
    "text, fragment",
    [("labels:1.5", "level of labels must be in [0, 1]"), ("labels:-0.1", "[0, 1]"), ("labels", "needs a level"),
     ("labels:abc", "must be a number"), ("nosuch", "unknown corruption 'nosuch'"),
     ("gaussian:0.5", "takes no level"), ("labels:nan", "finite")],
)
def test_bad_corruptions_are_refused(text, fragment):
    with pytest.raises(SpecError, match=None) as info:
        parse_corruption(text)
    assert fragment in str(info.value)


def test_parse_regularizer():
    reg = parse_regularizer("weight_decay=5e-4,dropout=0.5,augment,early_stopping=3")
    assert reg == RegularizerSpec(weight_decay=5e-4, dropout=0.5, augment=True, early_stopping=3)
    assert reg.label == "weight_decay=0.0005+dropout=0.5+augment+early_stopping=3"
    assert parse_regularizer("none") == RegularizerSpec() and RegularizerSpec().label == "none"
    assert parse_regularizer("batch_norm=false").batch_norm is False


@pytest.mark.parametrize(
    "text, fragment",
    [("weightdecay=1", "unknown regularizer 'weightdecay'; valid: weight_decay"), ("dropout=1.0", "dropout"),
     ("dropout=x", "must be a number"), ("augment=maybe", "true or false"), ("early_stopping=1.5", "integer"),
     ("weight_decay=-1", "weight_decay must be >= 0")],
)
def test_bad_regularizers_are_refused(text, fragment):
    with pytest.raises(SpecError) as info:
        parse_regularizer(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "build, fragment",
    [(lambda: RunSpec(model="nosuchnet"), "unknown model 'nosuchnet'"),
     (lambda: DataSpec(dataset="mnist"), "unknown dataset 'mnist'"),
     (lambda: DataSpec(train_size=0), "train_size"),
     (lambda: DataSpec(crop=40), "crop=40"),
     (lambda: TrainSpec(epochs=0), "train.epochs"),
     (lambda: TrainSpec(lr=-1.0), "train.lr"),
     (lambda: TrainSpec(optimizer="rmsprop"), "unknown optimizer"),
     (lambda: TrainSpec(lr_decay=1.5), "lr_decay"),
     (lambda: RunSpec(width=0.0), "width"),
     (lambda: RunSpec(seed=-1), "seed")],
)
def test_bad_specs_are_refused(build, fragment):
    with pytest.raises(SpecError) as info:
        build()
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "spelled, implicit",
    [(dict(model="mlp1x512", regularizer=RegularizerSpec(batch_norm=False)), dict(model="mlp1x512")),
     (dict(model="resnet18", regularizer=RegularizerSpec(batch_norm=True)), dict(model="resnet18")),
     (dict(regularizer=RegularizerSpec(holdout=0.2)), dict()),
     (dict(data=DataSpec(crop=32)), dict()),
     (dict(data=DataSpec(num_classes=100, image_size=16)), dict())],
)
def test_a_value_spelled_out_equal_to_its_default_is_the_same_run(spelled, implicit):
    assert RunSpec(**spelled).run_id == RunSpec(**implicit).run_id
    assert RunSpec(**spelled).to_dict() == RunSpec(**implicit).to_dict()


def test_values_that_change_the_run_still_change_its_id():
    base = RunSpec(model="mlp1x512")
    assert RunSpec(model="mlp1x512", regularizer=RegularizerSpec(batch_norm=True)).run_id != base.run_id
    assert RunSpec(model="resnet18", regularizer=RegularizerSpec(batch_norm=False)).run_id != RunSpec(model="resnet18").run_id
    stopping = RegularizerSpec(early_stopping=3)
    assert RunSpec(regularizer=RegularizerSpec(early_stopping=3, holdout=0.2)).run_id != RunSpec(regularizer=stopping).run_id
    synthetic = DataSpec(dataset="synthetic")
    assert RunSpec(data=DataSpec(dataset="synthetic", num_classes=5)).run_id != RunSpec(data=synthetic).run_id
    assert RunSpec(data=DataSpec(crop=28)).run_id != base.run_id


def test_stores_made_before_canonical_ids_keep_their_run_ids():
    # the id of the default run as every earlier rethink computed it (sha256 of its config)
    assert RunSpec().run_id == "55d2654b9d702d57"
