"""Config validation: one schema, defaults filled in, errors that name the key.

The schema (``schemas/config.schema.yaml``) is JSON Schema. Datasets and
encoders are validated against the sub-schema of their ``kind``, so an unknown
key or a wrong type is reported at its full path, e.g.
``datasets.flickr.captions: 'frist' is not one of ['first', 'all']``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
from importlib import resources
from typing import Any

import jsonschema
import yaml


class ConfigError(ValueError):
    """An invalid config; the message names the key at fault and how to fix it."""


@functools.cache
def load_schema() -> dict[str, Any]:
    """The parsed schema (cached: validation only reads it, never changes it)."""
    text = resources.files("mmalign").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _with_defaults(cls: type) -> type:
    """A validator class that also fills each missing property with its default."""
    validate_properties = cls.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "$ref" in sub:
                    sub = validator._resolver.lookup(sub["$ref"]).contents
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": properties})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _path(prefix: str, error: jsonschema.ValidationError) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in error.absolute_path]
    return ".".join(parts) or "<config>"


def _message(prefix: str, error: jsonschema.ValidationError) -> str:
    where = _path(prefix, error)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return f"{where}: unknown key {', '.join(hints)}; allowed keys: {allowed}"
    return f"{where}: {error.message}"


def _check(schema: dict[str, Any], instance: Any, prefix: str) -> None:
    errors = sorted(_Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(_message(prefix, e) for e in errors))


def _kind_schema(root: dict[str, Any], group: str, kind: str) -> dict[str, Any]:
    defs = root["$defs"]
    props = (
        {**defs[f"{group}_common"], **defs[f"{group}_kinds"][kind]}
        if group == "dataset"
        else {
            "kind": {"type": "string"},
            **defs["encoder_kinds"][kind],
        }
    )
    required = ["kind", *defs.get(f"{group}_required", {}).get(kind, [])]
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": props,
        "$defs": defs,
    }


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate ``config`` in place, fill its defaults, and return it.

    Raises :class:`ConfigError` naming every key at fault.
    """
    schema = load_schema()
    _check(schema, config, "")
    for group, section in (("dataset", "datasets"), ("encoder", "encoders")):
        kinds = sorted(schema["$defs"][f"{group}_kinds"])
        for name, entry in config[section].items():
            kind = entry.get("kind")
            if kind not in kinds:
                close = difflib.get_close_matches(str(kind), kinds, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"invalid config:\n  {section}.{name}.kind: unknown {group} kind "
                    f"{kind!r}{hint}; known kinds: {kinds}"
                )
            _check(_kind_schema(schema, group, kind), entry, f"{section}.{name}")
    check_dataset_splits(config)
    check_multicaption(config)
    check_precomputed_paths(config)
    return config


# Dataset kinds whose files never give a split of their own (flickr30k gives
# one in Karpathy's JSON only; a folder's captions file may have a `split` column).
NO_DATASET_SPLIT = {
    "openclipart": "the OpenClipArt library has no split of its own",
    "coco": "COCO's captions_*.json has no split of its own (the file is the split)",
    "imdb": "the IMDB CSV has no split column",
}


def check_dataset_splits(config: dict[str, Any]) -> None:
    """``splits.source`` / ``splits.eval_source: dataset`` only where the format can give
    a split: never for openclipart, coco and imdb, and for flickr30k only from
    Karpathy's JSON (``captions_file`` ending in ``.json``)."""
    for name, dataset in config["datasets"].items():
        kind, splits = dataset["kind"], dataset["splits"]
        why = NO_DATASET_SPLIT.get(kind)
        if kind == "flickr30k" and not str(dataset["captions_file"]).lower().endswith(".json"):
            why = (
                f"captions_file {dataset['captions_file']!r} is Kaggle's results.csv, which has "
                "no split; Karpathy's dataset_flickr30k.json has one"
            )
        if why is None:
            continue
        for key, fallback in (("source", "random"), ("eval_source", "split")):
            if splits[key] == "dataset":
                raise ConfigError(
                    f"invalid config:\n  datasets.{name}.splits.{key}: 'dataset' takes the split "
                    f"the dataset's file gives, and {why}; use {key}: {fallback}"
                )


def check_multicaption(config: dict[str, Any]) -> None:
    """``multicaption`` in ``retrieval.protocols`` needs a dataset with several captions
    per image: with ``captions: first`` everywhere, every image has one caption and
    image-to-text precision@5 could not exceed 0.2. (Whether a ``captions: all``
    dataset really has several is known only after ``prepare``:
    :func:`mmalign.datasets.base.multicaption_note` checks the embeddings.)"""
    if "multicaption" not in config["retrieval"]["protocols"]:
        return
    if any(dataset["captions"] == "all" for dataset in config["datasets"].values()):
        return
    keys = ", ".join(f"datasets.{name}.captions" for name in sorted(config["datasets"]))
    raise ConfigError(
        "invalid config:\n  retrieval.protocols: 'multicaption' scores every caption of each "
        f"image, but {keys} {'is' if len(config['datasets']) == 1 else 'are all'} 'first' "
        "(one caption per image, so image-to-text precision@5 could not exceed 0.2); set "
        "captions: all for a dataset with several captions per image, or remove "
        "'multicaption' from retrieval.protocols"
    )


#: The encoder kind whose embeddings are files made elsewhere (mmalign.precomputed).
PRECOMPUTED = "precomputed"


def check_precomputed_paths(config: dict[str, Any]) -> None:
    """A ``precomputed`` encoder's paths may hold ``{dataset}`` and no other
    placeholder, and must hold it when the config has several datasets (one
    file cannot match the ids of every dataset)."""
    several = len(config["datasets"]) > 1
    for name, encoder in config["encoders"].items():
        if encoder["kind"] != PRECOMPUTED:
            continue
        for key in ("image", "text"):
            where = f"encoders.{name}.{key}"
            rest = encoder[key].replace("{dataset}", "")
            if "{" in rest or "}" in rest:
                raise ConfigError(
                    f"invalid config:\n  {where}: {encoder[key]!r} has a placeholder other than "
                    "{dataset}, the one a precomputed path may hold"
                )
            if several and "{dataset}" not in encoder[key]:
                names = ", ".join(sorted(config["datasets"]))
                raise ConfigError(
                    f"invalid config:\n  {where}: {encoder[key]!r} is one file for "
                    f"{len(config['datasets'])} datasets ({names}); "
                    "put {dataset} in the path (e.g. embeddings/{dataset}/image.parquet), "
                    "which is replaced by each dataset's name"
                )


def load_config(path: str) -> dict[str, Any]:
    """Read a YAML config (safe_load) and validate it."""
    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config is a YAML mapping, got {type(config).__name__}")
    return validate_config(config)


# The smallest config the schema accepts; its validated form holds every default.
_MINIMAL = {
    "datasets": {"d": {"kind": "folder"}},
    "encoders": {"e": {"kind": "hf_clip", "model": "m"}},
}


@functools.cache
def _defaults(section: str) -> Any:
    schema = load_schema()
    parts = section.split(".") if section else []
    if parts[:1] == ["datasets"]:
        if len(parts) != 2:
            raise KeyError(f"{section!r}: a dataset section is 'datasets.<kind>' or 'datasets.*'")
        if parts[1] == "*":  # the keys every dataset kind has
            node = {"type": "object", "properties": schema["$defs"]["dataset_common"]}
            instance: dict[str, Any] = {}
        else:
            node, instance = _kind_schema(schema, "dataset", parts[1]), {"kind": parts[1]}
        _check({**node, "$defs": schema["$defs"]}, instance, section)
        instance.pop("kind", None)
        return instance
    value: Any = validate_config(copy.deepcopy(_MINIMAL))
    for depth, part in enumerate(parts, 1):
        if not isinstance(value, dict) or part not in value:
            where = ".".join(parts[:depth])
            raise KeyError(f"{section!r}: the schema gives no defaults at {where!r}")
        value = value[part]
    return value


def schema_defaults(section: str) -> dict[str, Any]:
    """The defaults the validated config gets for ``section``: the one home of
    every default (option dataclasses take theirs from here).

    ``section`` is a dotted path into the config (``"retrieval"``,
    ``"learn.mlp"``, ``"alignment"``; ``""`` = the whole config);
    ``"datasets.<kind>"`` gives a dataset kind's defaults and ``"datasets.*"``
    those every kind has. Returns a fresh copy (the result is cached)."""
    return copy.deepcopy(_defaults(section))


def config_hash(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def embedding_plan(
    encoders: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Which encoders are embedded from data, which are read from files made
    elsewhere, and which derive from another's output.

    Returns ``(computed, precomputed, adapted_from)``: each name the embeddings
    folder of which one rule makes (``embed_merge``, ``embed_precomputed``,
    ``adapt``). An encoder with an ``adapter`` reuses the embeddings of a
    configured twin that has the same models (or files) and no adapter; with
    no such twin, a hidden ``<name>-raw`` encoder is computed (or read).
    """
    computed = {name: spec for name, spec in encoders.items() if "adapter" not in spec}
    adapted_from: dict[str, str] = {}
    for name, spec in sorted(encoders.items()):
        if "adapter" not in spec:
            continue
        base = {k: v for k, v in spec.items() if k != "adapter"}
        twin = next((n for n, s in sorted(computed.items()) if s == base), None)
        if twin is None:
            twin = f"{name}-raw"
            if twin in encoders:
                raise ConfigError(
                    f"encoders.{twin}: this name is reserved for {name}'s raw embeddings"
                )
            computed[twin] = base
        adapted_from[name] = twin
    precomputed = {n: s for n, s in computed.items() if s["kind"] == PRECOMPUTED}
    computed = {n: s for n, s in computed.items() if n not in precomputed}
    return computed, precomputed, adapted_from
