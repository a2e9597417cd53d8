from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mmalign.config import ConfigError, config_hash, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def minimal() -> dict:
    return {
        "datasets": {"toy": {"kind": "folder", "root": "data/toy"}},
        "encoders": {"clip": {"kind": "hf_clip", "model": "openai/clip-vit-base-patch32"}},
    }


@pytest.mark.parametrize("path", ["config.yaml", "configs/paper.yaml"])
def test_shipped_configs_are_valid(path: str) -> None:
    config = load_config(str(ROOT / path))
    assert config["seed"] == 0


def test_defaults_are_filled() -> None:
    config = validate_config(minimal())
    toy = config["datasets"]["toy"]
    assert toy["captions"] == "first"
    assert toy["splits"] == {"source": "random", "train": 0.8, "val": 0.1, "test": 0.1}
    assert toy["captions_file"] == "captions.csv"
    assert config["encoders"]["clip"]["preprocess"] == "model"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(sead=1), r"<config>: unknown key 'sead' \(did you mean 'seed'\?\)"),
        (lambda c: c.update(seed="one"), r"seed: 'one' is not of type 'integer'"),
        (
            lambda c: c["datasets"]["toy"].update(captons="all"),
            r"datasets\.toy: unknown key 'captons' \(did you mean 'captions'\?\)",
        ),
        (
            lambda c: c["datasets"]["toy"].update(captions="frist"),
            r"datasets\.toy\.captions: 'frist' is not one of \['first', 'all'\]",
        ),
        (
            lambda c: c["datasets"]["toy"].update(kind="flickr"),
            r"datasets\.toy\.kind: unknown dataset kind 'flickr' \(did you mean 'flickr30k'\?\)",
        ),
        (
            lambda c: c["encoders"].update(bad={"kind": "clip", "model": "x"}),
            r"encoders\.bad\.kind: unknown encoder kind 'clip'",
        ),
        (
            lambda c: c["encoders"].update(p={"kind": "pair", "image": {"kind": "timm"}}),
            r"encoders\.p: 'text' is a required property[\s\S]*encoders\.p\.image: 'model'",
        ),
        (
            lambda c: c["datasets"].update({"my/set": {"kind": "folder", "root": "x"}}),
            r"datasets: 'my/set' does not match",
        ),
        (lambda c: c.pop("encoders"), r"<config>: 'encoders' is a required property"),
        (
            lambda c: c["datasets"]["toy"].update(max_images=0),
            r"datasets\.toy\.max_images: 0 is less than the minimum of 1",
        ),
        (
            lambda c: c["encoders"]["clip"].update(pooling="mean"),
            r"encoders\.clip: unknown key 'pooling'",
        ),
    ],
)
def test_errors_name_the_key(mutate, message: str) -> None:
    config = minimal()
    mutate(config)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_openclipart_only_keys_are_refused_elsewhere() -> None:
    config = minimal()
    config["datasets"]["toy"]["max_share"] = 2
    with pytest.raises(ConfigError, match=r"datasets\.toy: unknown key 'max_share'"):
        validate_config(config)


def test_config_hash_ignores_key_order() -> None:
    a = minimal()
    b = copy.deepcopy(a)
    b["datasets"] = dict(reversed(list(b["datasets"].items())))
    assert config_hash(a) == config_hash(b)
    b["seed"] = 1
    assert config_hash(a) != config_hash(b)
