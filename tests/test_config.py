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
    assert toy["splits"] == {
        "source": "random",
        "eval_source": "split",
        "train": 0.8,
        "val": 0.1,
        "test": 0.1,
    }
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


def test_paper_config_reaches_table_5() -> None:
    """Table 5: Flickr30K's Karpathy 1K test split with every caption, fp32 features;
    the learned stage keeps the seeded random split over 20K pairs."""
    config = load_config(str(ROOT / "configs/paper.yaml"))
    flickr = config["datasets"]["flickr30k"]
    assert flickr["captions"] == "all" and flickr["captions_file"].endswith(".json")
    assert flickr["splits"]["eval_source"] == "dataset" and flickr["splits"]["source"] == "random"
    assert "multicaption" in config["retrieval"]["protocols"]
    assert config["retrieval"]["multicaption_split"] == "test"
    assert config["embed"]["amp"] is False
    assert config["learn"]["max_pairs"] == 20000
    assert [flickr["splits"][s] for s in ("train", "val", "test")] == [0.8, 0.1, 0.1]


def test_multicaption_with_one_caption_everywhere_names_the_keys() -> None:
    config = minimal()
    config["retrieval"] = {"protocols": ["subset", "multicaption"]}
    with pytest.raises(
        ConfigError,
        match=r"retrieval\.protocols: 'multicaption'.*datasets\.toy\.captions is 'first'.*0\.2",
    ):
        validate_config(copy.deepcopy(config))
    config["datasets"]["toy"]["captions"] = "all"
    assert validate_config(config)["retrieval"]["protocols"] == ["subset", "multicaption"]
    # One dataset with every caption is enough; the others get n/a rows at retrieval.
    config["datasets"]["other"] = {"kind": "folder", "root": "x"}
    validate_config(config)


@pytest.mark.parametrize(
    ("dataset", "key", "message"),
    [
        ({"kind": "coco", "root": "c"}, "source", r"COCO's captions_\*\.json has no split"),
        ({"kind": "imdb", "root": "i"}, "eval_source", r"the IMDB CSV has no split column"),
        ({"kind": "openclipart"}, "source", r"OpenClipArt library has no split"),
        ({"kind": "flickr30k", "root": "f"}, "eval_source", r"'results\.csv' is Kaggle's"),
    ],
)
def test_dataset_split_where_the_format_has_none(dataset: dict, key: str, message: str) -> None:
    config = minimal()
    config["datasets"]["toy"] = {**dataset, "splits": {key: "dataset"}}
    with pytest.raises(ConfigError, match=rf"datasets\.toy\.splits\.{key}: 'dataset'.*{message}"):
        validate_config(config)


def test_dataset_split_where_the_format_can_have_one() -> None:
    config = minimal()
    config["datasets"]["toy"]["splits"] = {"source": "dataset", "eval_source": "dataset"}
    config["datasets"]["f"] = {
        "kind": "flickr30k", "root": "f", "captions_file": "dataset_flickr30k.JSON",
        "splits": {"eval_source": "dataset"},
    }  # fmt: skip
    validate_config(config)
