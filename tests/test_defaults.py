"""The schema is the one home of every default.

Every options dataclass (a dataclass in ``src/mmalign`` with a ``from_config``
classmethod, found by reading the source, so a new one cannot be forgotten) must:

* build from the validated section of a minimal config to exactly its own
  defaults (``cls.from_config(section) == cls()``), and
* have, field by field, the default the validated config gets for the key of the
  same name (or the key :data:`SPECS` names), compared as JSON, so 20 and 20.0 differ.

Fields with no schema key say why in ``code_only``; schema keys that are no field
(read elsewhere) are listed in ``config_only``.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import mmalign.config as config_module
from mmalign.config import schema_defaults, validate_config

SRC = Path(__file__).resolve().parents[1] / "src"

MINIMAL = {
    "datasets": {"d": {"kind": "folder"}},
    "encoders": {"e": {"kind": "hf_clip", "model": "m"}},
}


@dataclasses.dataclass(frozen=True)
class Spec:
    module: str
    section: str  # the section whose defaults the fields take (schema_defaults)
    config_path: str = ""  # where from_config's input sits in the config; "" = section
    args: Callable[[dict[str, Any]], dict[str, Any]] = lambda config: {}  # from_config's others
    # field -> the key it takes its default from, as a dotted path from the section
    # ("splits.source"), "/seed" for a path from the config's root, or a tuple of them
    # for a tuple field; fields not named here take the key of their own name.
    keys: dict[str, Any] = dataclasses.field(default_factory=dict)
    code_only: dict[str, str] = dataclasses.field(default_factory=dict)  # field -> why
    config_only: frozenset[str] = frozenset()  # section keys read elsewhere

    @property
    def where(self) -> str:
        return self.config_path or self.section


SEED = {"seed": "/seed"}  # the config's top-level seed, passed to from_config

SPECS: dict[str, Spec] = {
    "RetrievalOptions": Spec(
        "mmalign.retrieval",
        "retrieval",
        args=lambda config: {"seed": config["seed"]},
        keys=SEED,
        config_only=frozenset({"protocols"}),  # the workflow's rules read it
    ),
    "GeometryConfig": Spec("mmalign.geometry", "geometry"),
    "GapShiftOptions": Spec("mmalign.gapshift", "gap_shift"),
    "RepresentationOptions": Spec("mmalign.representation", "alignment"),
    "EmbedOptions": Spec(
        "mmalign.embed",
        "embed",
        args=lambda config: {"threads": 2},
        code_only={"num_workers": "the schema's 'auto' = the rule's threads - 1 (1 at 2 threads)"},
    ),
    "MLPOptions": Spec(
        "mmalign.learn.mlp",
        "learn.mlp",
        code_only={"stop_against": "no config key: the ablation sets it"},
    ),
    "AlignOptions": Spec("mmalign.learn.align", "learn.align"),
    "LinearOptions": Spec("mmalign.learn.align", "learn.linear"),
    "AblationOptions": Spec(
        "mmalign.learn.ablation",
        "learn.ablation",
        config_only=frozenset({"enabled"}),  # the workflow's rules read it
    ),
    "ManifestOptions": Spec(
        "mmalign.datasets.base",
        "datasets.*",
        config_path="datasets.d",
        args=lambda config: {"seed": config["seed"]},
        keys={
            **SEED,
            "split_source": "splits.source",
            "eval_source": "splits.eval_source",
            "split_fractions": ("splits.train", "splits.val", "splits.test"),
        },
        config_only=frozenset({"on_bad_input"}),  # prepare_dataset's PrepareReport reads it
    ),
}


def _is_dataclass_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    return name == "dataclass"


def discover() -> dict[str, str]:
    """{class name: module} of every dataclass in src/mmalign with a ``from_config``."""
    found: dict[str, str] = {}
    for path in sorted((SRC / "mmalign").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ClassDef)
                and any(_is_dataclass_decorator(d) for d in node.decorator_list)
                and any(
                    isinstance(f, ast.FunctionDef) and f.name == "from_config" for f in node.body
                )
            ):
                found[node.name] = module
    return found


def options_class(name: str) -> type:
    return getattr(importlib.import_module(SPECS[name].module), name)


def walk(value: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        value = value[part]
    return value


def schema_default(spec: Spec, key: Any) -> Any:
    """The validated config's default for ``key`` (see :attr:`Spec.keys`)."""
    if isinstance(key, tuple):
        return [schema_default(spec, k) for k in key]
    if key.startswith("/"):
        return walk(schema_defaults(""), key[1:])
    return walk(schema_defaults(spec.section), key)


def mismatches(name: str) -> list[str]:
    """Each field whose code default is not the schema's, named, with both values."""
    spec, cls = SPECS[name], options_class(name)
    out = []
    for field in dataclasses.fields(cls):
        if field.name in spec.code_only:
            continue
        if field.default is dataclasses.MISSING:
            out.append(f"{name}.{field.name}: no default")
            continue
        key = spec.keys.get(field.name, field.name)
        try:
            want = schema_default(spec, key)
        except KeyError:
            out.append(f"{name}.{field.name}: no schema default at {spec.section}.{key}")
            continue
        if json.dumps(field.default) != json.dumps(want):
            out.append(f"{name}.{field.name}: code {field.default!r} != schema {want!r} ({key})")
    return out


def test_every_options_class_is_specified() -> None:
    found = discover()
    assert found == {name: spec.module for name, spec in SPECS.items()}, (
        "a dataclass with from_config is missing from SPECS (or SPECS names one that is gone)"
    )


@pytest.mark.parametrize("name", sorted(SPECS))
def test_from_config_of_the_minimal_config_is_the_default(name: str) -> None:
    spec, cls = SPECS[name], options_class(name)
    config = validate_config(copy.deepcopy(MINIMAL))
    assert cls.from_config(walk(config, spec.where), **spec.args(config)) == cls()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_default_is_the_schemas(name: str) -> None:
    assert mismatches(name) == []


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_schema_key_of_the_section_is_a_field_or_said_to_be_read_elsewhere(
    name: str,
) -> None:
    spec, cls = SPECS[name], options_class(name)
    used = set()
    for field in (f.name for f in dataclasses.fields(cls)):
        key = spec.keys.get(field, field)
        for k in key if isinstance(key, tuple) else (key,):
            if not k.startswith("/"):
                used.add(k.split(".")[0])
    assert set(schema_defaults(spec.section)) - used == set(spec.config_only)


def test_schema_defaults_are_the_validated_configs() -> None:
    config = validate_config(copy.deepcopy(MINIMAL))
    assert schema_defaults("") == config
    for spec in SPECS.values():
        if spec.config_path:
            section = walk(config, spec.config_path)
            assert schema_defaults(spec.section).items() <= section.items()
        else:
            assert schema_defaults(spec.section) == walk(config, spec.section)
    with pytest.raises(KeyError, match=r"no defaults at 'retrieval\.nope'"):
        schema_defaults("retrieval.nope")


def test_schema_defaults_returns_a_copy() -> None:
    schema_defaults("retrieval")["ks"].append(99)
    assert schema_defaults("retrieval")["ks"] == [1, 5, 10]


@pytest.fixture
def changed_schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The schema with retrieval.subset_size's default changed to 999 (the option
    classes keep the defaults they read at import)."""
    schema = copy.deepcopy(config_module.load_schema())
    schema["properties"]["retrieval"]["properties"]["subset_size"]["default"] = 999
    schema["$defs"]["dataset_common"]["splits"]["properties"]["val"]["default"] = 0.2
    monkeypatch.setattr(config_module, "load_schema", lambda: schema)
    config_module._defaults.cache_clear()
    yield
    monkeypatch.undo()
    config_module._defaults.cache_clear()


@pytest.mark.usefixtures("changed_schema")
def test_a_changed_schema_default_is_caught_and_named() -> None:
    assert mismatches("RetrievalOptions") == [
        "RetrievalOptions.subset_size: code 1000 != schema 999 (subset_size)"
    ]
    assert mismatches("ManifestOptions") == [
        "ManifestOptions.split_fractions: code (0.8, 0.1, 0.1) != schema [0.8, 0.2, 0.1] "
        "(('splits.train', 'splits.val', 'splits.test'))"
    ]
    assert mismatches("GeometryConfig") == []
