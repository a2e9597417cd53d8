"""Every rule's conda env provides what its script needs, and no more of the
heavy parts; every rule declares the resources a cluster scheduler needs.

A rule's script runs in its env under `--sdm conda`, which these tests cannot
build here (no conda), so they check the env files statically, against what
the scripts really import: each script's imports, and transitively those of
the mmalign modules it uses, are mapped to the distributions that provide them
(as installed in this environment), and the rule's env must list each one,
either itself or through mmalign's pinned dependencies in pyproject.toml when
it installs mmalign (`pip: -e <repository>[extras]`: the core dependencies
plus those extras'). A module imported directly must be a direct dependency:
relying on another package's requirement breaks the day that package drops it.

The walk follows what can run: every module-level import of each module that
gets loaded, and the imports inside a function only when something loaded
refers to that function's name (so a figure script that loads mmalign.geometry
does not need torch for geometry_job's deferred import). `if TYPE_CHECKING:`
blocks never run. Then, as a check on the walk, each env's scripts' imports
are run with every pinned distribution the env lacks made unimportable.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "mmalign"
# Programs that mmalign runs (shutil.which / subprocess), and the conda-forge
# package that provides each.
EXECUTABLES = {"rsvg-convert": "librsvg"}
# Programs the code tries and does without: tracking.git_commit returns
# "unknown" without git (and the Snakefile, not a job, calls it).
OPTIONAL_PROGRAMS = {"git"}
# conda-forge names that differ from the distribution's name on PyPI.
CONDA_TO_PYPI = {"pytorch": "torch", "pytorch-gpu": "torch", "pytorch-cpu": "torch"}

# Loads the workflow through the Snakemake API, in a child process (the API
# changes directory and the Snakefile may set environment variables), and
# prints each rule's env, script and declared resources, plus the environment
# variables the Snakefile set.
PROBE = r"""
import json, os, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.enums import Quietness
from snakemake.settings.types import OutputSettings, ResourceSettings

before = dict(os.environ)
snakefile, workdir = Path(sys.argv[1]), Path(sys.argv[2])
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    wf = api.workflow(resource_settings=ResourceSettings(), snakefile=snakefile, workdir=workdir)
    rules = []
    for rule in wf._workflow.rules:
        base = Path(rule.basedir)
        conda = rule.conda_env
        rules.append({
            "name": rule.name,
            "norun": bool(rule.norun),
            "conda": str(base / conda) if isinstance(conda, str) else conda and str(conda),
            "script": str(base / rule.script) if rule.script else None,
            # A resource computed per job (mmalign.resources.scaled) shows as "per job".
            "resources": {
                name: "per job" if res.is_evaluable()
                else res.value if isinstance(res.value, int) else None
                for name, res in rule.resources.items()
                if not name.startswith("_") and name != "tmpdir"
            },
        })
set_env = {k: v for k, v in os.environ.items() if before.get(k) != v}
print(json.dumps({"rules": rules, "env": set_env}))
"""


@dataclass
class Rule:
    name: str
    conda: Path | None
    script: Path | None
    resources: dict[str, int | str | None]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The workflow's rules (those that run something) and the env vars it sets."""
    return probe_workflow(tmp_path_factory.mktemp("probe"), (ROOT / "config.yaml").read_text())


def probe_workflow(workdir: Path, config_text: str) -> dict:
    """The rules of the workflow with this config (the API writes .snakemake/ in workdir)."""
    (workdir / "config.yaml").write_text(config_text)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "Snakefile"), str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    rules = [
        Rule(
            r["name"],
            Path(r["conda"]).resolve() if r["conda"] else None,
            Path(r["script"]).resolve() if r["script"] else None,
            r["resources"],
        )
        for r in data["rules"]
        if not r["norun"]
    ]
    return {"rules": rules, "env": data["env"], "workdir": workdir}


# --- what a script needs -----------------------------------------------------------


def module_file(name: str) -> Path | None:
    """The source file of an mmalign module, or None if ``name`` is not one."""
    base = SRC.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.exists():
            return path
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@dataclass
class Needs:
    """What a script needs: third-party modules (with the mmalign module that
    imports each), programs, the mmalign source files it loads, and the import
    statements that may run (made absolute)."""

    modules: dict[str, str] = field(default_factory=dict)
    programs: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module an ``import from`` names, relative imports made absolute."""
    module = node.module or ""
    if not node.level or not path.is_relative_to(SRC):
        return module
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, module] if module else base)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _runs_now(node: ast.AST) -> list[ast.AST]:
    """The nodes of ``node``'s own code: not the bodies of the functions it
    defines (their decorators and defaults, which run at definition, are
    included), nor `if TYPE_CHECKING:` blocks."""
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        found.append(current)
        if _is_type_checking(current):
            stack.extend(current.orelse)
            continue
        if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef) and current is not node:
            stack.extend(current.decorator_list)
            stack.extend(d for d in (*current.args.defaults, *current.args.kw_defaults) if d)
            continue
        stack.extend(ast.iter_child_nodes(current))
    return found


def _programs(nodes: list[ast.AST]) -> set[str]:
    """Programs named as literals in shutil.which("x") or subprocess.run(["x", ...])."""
    found = set()
    for node in nodes:
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        is_which = getattr(func, "attr", getattr(func, "id", "")) == "which"
        is_subprocess = isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == (
            "subprocess"
        )
        first = node.args[0]
        if isinstance(first, ast.List | ast.Tuple) and first.elts:
            first = first.elts[0]
        literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
        if (is_which or is_subprocess) and literal and first.value.strip():
            found.add(first.value.split()[0])
    return found


@functools.cache
def script_needs(script: Path, reachable: bool = False) -> Needs:
    """What ``script`` needs. By default every import anywhere in every mmalign
    module it can load (an over-approximation); with ``reachable``, only the
    code that can run (see the module's docstring)."""
    needs = Needs()
    trees: dict[Path, ast.Module] = {}
    functions: dict[str, list[tuple[Path, ast.AST]]] = {}
    names: set[str] = set()  # every name the code that runs refers to
    done: set[int] = set()  # id() of the function bodies already scanned
    queue: list[tuple[Path, list[ast.AST]]] = []

    def load(path: Path) -> None:
        if path in trees:
            return
        tree = trees[path] = ast.parse(path.read_text(), filename=str(path))
        needs.files.append(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.setdefault(node.name, []).append((path, node))
        queue.append((path, _runs_now(tree) if reachable else list(ast.walk(tree))))

    def scan(path: Path, nodes: list[ast.AST]) -> None:
        where = path.relative_to(ROOT).as_posix()
        for program in _programs(nodes):
            needs.programs.setdefault(program, where)
        for node in nodes:
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
                needs.statements.append(f"import {', '.join(modules)}")
            elif isinstance(node, ast.ImportFrom):
                origin = _absolute(node, path)
                needs.statements.append(
                    f"from {origin} import {', '.join(alias.name for alias in node.names)}"
                )
                # `from mmalign.datasets import coco` imports the submodule coco.
                modules = [origin, *(f"{origin}.{alias.name}" for alias in node.names)]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top == PACKAGE:
                    # A submodule import runs every enclosing package's __init__ too.
                    parts = module.split(".")
                    for i in range(1, len(parts) + 1):
                        file = module_file(".".join(parts[:i]))
                        if file:
                            load(file)
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    needs.modules.setdefault(top, where)

    load(script)
    while queue:
        # Dunder methods run without being named (Foo(...) runs Foo.__init__).
        names |= {name for name in functions if name.startswith("__") and name.endswith("__")}
        while queue:
            scan(*queue.pop())
        if not reachable:
            break
        for name in sorted(names & functions.keys()):
            for path, fn in functions[name]:
                if id(fn) not in done:
                    done.add(id(fn))
                    body = [n for child in fn.body for n in _runs_now(child)]
                    queue.append((path, body))
    return needs


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    return {normalize(d) for d in _packages_distributions().get(module, [])}


# --- what an env provides ----------------------------------------------------------


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    """mmalign's pinned requirements with ``extras``: the core dependencies and
    each extra's, following extras that name mmalign's own (``mmalign[a,b]``)."""
    project = pyproject()
    optional = project.get("optional-dependencies", {})
    found, todo, seen = [Requirement(d) for d in project["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"pyproject.toml has no extra {extra!r}"
        for dep in optional[extra]:
            req = Requirement(dep)
            if normalize(req.name) == PACKAGE:
                todo.extend(req.extras)
            else:
                found.append(req)
    return found


def pinned_dependencies(extras: tuple[str, ...] = ()) -> set[str]:
    return {normalize(req.name) for req in _requirements(extras)}


def workflow_dependencies() -> set[str]:
    """Every distribution a rule may need: mmalign with every extra but the test tools."""
    extras = tuple(e for e in pyproject().get("optional-dependencies", {}) if e != "test")
    return pinned_dependencies(extras)


def _split_local(line: str) -> tuple[str, tuple[str, ...]]:
    """`-e <path>[a,b]` -> (<path>, ("a", "b"))."""
    spec = re.sub(r"^(-e|--editable)\s+", "", line.strip())
    match = re.fullmatch(r"(.*?)(?:\[([^\]]*)\])?", spec)
    extras = tuple(e.strip() for e in (match.group(2) or "").split(",") if e.strip())
    return match.group(1), extras


@dataclass
class Env:
    path: Path
    conda: dict[str, str]  # name -> spec
    pip: list[str]

    @classmethod
    def load(cls, path: Path) -> Env:
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict) and isinstance(data.get("dependencies"), list), (
            f"{path}: a conda env file needs a `dependencies:` list"
        )
        conda, pip = {}, []
        for dep in data["dependencies"]:
            if isinstance(dep, dict):
                assert set(dep) == {"pip"}, f"{path}: unknown dependency block {dep}"
                pip.extend(dep["pip"])
            else:
                name = re.split(r"[\s=<>!]", str(dep).split("::")[-1], maxsplit=1)[0]
                conda[normalize(name)] = str(dep)
        return cls(path, conda, pip)

    def local_projects(self, env_vars: dict[str, str], workdir: Path) -> list[Path]:
        """The local folders that `pip install -e <path>` lines install, resolved
        as they are under `snakemake --sdm conda`: Snakemake copies the env file
        to <workdir>/.snakemake/conda/<hash>.yaml, conda runs pip from that
        folder, and pip expands ${VAR} from the environment (which includes what
        the Snakefile set)."""
        pip_cwd = workdir / ".snakemake" / "conda"
        found = []
        for line in self.pip:
            if not _is_local(line):
                continue  # a PyPI requirement, not a local folder
            spec, _ = _split_local(line)
            spec = re.sub(
                r"\$\{([A-Z0-9_]+)\}", lambda m: env_vars.get(m.group(1), m.group(0)), spec
            )
            found.append((pip_cwd / spec).resolve())
        return found

    def provides(self) -> set[str]:
        """Distributions the env installs. A local `-e <path>[extras]` install
        counts as mmalign with its core dependencies and those extras' (that it
        reaches this repository is test_envs_install_mmalign_from_this_repository's
        business)."""
        names = {CONDA_TO_PYPI.get(name, name) for name in self.conda}
        names |= {normalize(Requirement(p).name) for p in self.pip if not _is_local(p)}
        for line in self.pip:
            if _is_local(line):
                names |= pinned_dependencies(self.extras(line)) | {PACKAGE}
        return names

    @staticmethod
    def extras(line: str) -> tuple[str, ...]:
        return _split_local(line)[1]


def _is_local(line: str) -> bool:
    return line.strip().startswith(("-e", "--editable", ".", "/", "$"))


def env_files() -> list[Path]:
    return sorted((ROOT / "envs").glob("*.yaml")) + sorted((ROOT / "envs").glob("*.yml"))


# --- the tests ---------------------------------------------------------------------


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_file_parses(path: Path) -> None:
    env = Env.load(path)
    assert "python" in env.conda, f"{path.name}: pin python, as pyproject's requires-python"
    version = re.search(r"python\s*=*\s*([\d.]+)", env.conda["python"]).group(1)
    requires = SpecifierSet(pyproject()["requires-python"])
    assert requires.contains(version + ".0" if version.count(".") == 1 else version), (
        f"{path.name}: python {version} is outside pyproject's requires-python {requires}"
    )
    if any(_is_local(p) for p in env.pip):
        assert "pip" in env.conda, f"{path.name}: a pip section needs pip in the env"


def test_every_rule_has_an_env_in_envs(workflow: dict) -> None:
    for rule in workflow["rules"]:
        assert rule.conda is not None, f"rule {rule.name}: no `conda:` env"
        assert rule.conda.exists(), f"rule {rule.name}: {rule.conda} does not exist"
        assert rule.conda.resolve().parent == ROOT / "envs", (
            f"rule {rule.name}: its env {rule.conda} is not in envs/"
        )


def test_envs_install_mmalign_from_this_repository(workflow: dict, tmp_path: Path) -> None:
    """`-e <path>` must reach this repository from where conda runs pip, for
    any working directory (`--directory`), not just from envs/."""
    for path in sorted({rule.conda for rule in workflow["rules"] if rule.conda}):
        env = Env.load(path)
        if not env.local_projects({}, ROOT):
            continue
        for workdir in (workflow["workdir"], tmp_path):
            resolved = env.local_projects(workflow["env"], workdir)
            assert ROOT in resolved, (
                f"{path.relative_to(ROOT)}: pip installs {env.pip} which, run from "
                f"{workdir / '.snakemake/conda'} (where Snakemake puts the env file), is "
                f"{[str(p) for p in resolved]}, not the repository {ROOT}. Use an absolute "
                "path, e.g. `-e ${MMALIGN_ROOT}` with the Snakefile setting "
                "os.environ['MMALIGN_ROOT'] to workflow.basedir."
            )


def test_each_env_provides_what_its_scripts_import(workflow: dict) -> None:
    problems = []
    for rule in workflow["rules"]:
        if rule.script is None or rule.conda is None:
            continue
        env = Env.load(rule.conda)
        provided = env.provides()
        needs = script_needs(rule.script, reachable=True)
        env_name = rule.conda.relative_to(ROOT)
        for module, where in sorted(needs.modules.items()):
            dists = distributions_of(module)
            if not dists:
                problems.append(f"{where} imports {module}, which no installed distribution has")
            elif not dists & provided:
                problems.append(
                    f"rule {rule.name}: {where} imports {module} (distribution "
                    f"{'/'.join(sorted(dists))}), which neither {env_name} nor, through "
                    "mmalign, pyproject.toml's dependencies and the extras it installs list"
                )
        for program, where in sorted(needs.programs.items()):
            if program in OPTIONAL_PROGRAMS:
                continue
            package = EXECUTABLES.get(program)
            if package is None:
                problems.append(f"{where} runs {program}: add its conda package to EXECUTABLES")
            elif package not in env.conda:
                problems.append(
                    f"rule {rule.name}: {where} runs {program}, from conda's {package}, "
                    f"which {env_name} does not list"
                )
    assert not problems, "\n".join(problems)


def test_the_import_walk_sees_through_mmalign() -> None:
    """The check above is only as good as this walk: the embedding script's
    own imports are mmalign's, yet it needs torch, timm, transformers and
    rsvg-convert through them, deferred imports inside functions included."""
    for reachable in (False, True):
        needs = script_needs(ROOT / "scripts/embed_shard.py", reachable=reachable)
        assert {"torch", "timm", "transformers", "PIL", "numpy"} <= set(needs.modules)
        assert "rsvg-convert" in needs.programs
    assert {"torch"} <= distributions_of("torch") and "pillow" in distributions_of("PIL")
    # geometry_job imports mmalign.embed (torch) inside the function: the walk sees it.
    assert "torch" in script_needs(ROOT / "scripts/geometry.py", reachable=True).modules


def test_the_reachable_walk_follows_what_runs(tmp_path: Path, monkeypatch) -> None:
    """Deferred imports count only in functions that something refers to, by
    call or as a value (a callback), and `if TYPE_CHECKING:` never runs."""
    package = tmp_path / "src" / PACKAGE
    package.mkdir(parents=True)
    (package / "lib.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "def used():\n    import scipy\n"
        "def callback():\n    import sklearn\n"
        "def unused():\n    import mlflow\n"
        "class Thing:\n    def __init__(self):\n        import statsmodels\n"
        "def run():\n    Thing()\n    return map(callback, [1])\n"
    )
    script = tmp_path / "script.py"
    script.write_text(f"from {PACKAGE}.lib import run, used\nused()\nrun()\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "src")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert set(script_needs(script, reachable=True).modules) == {"scipy", "sklearn", "statsmodels"}
    assert {"torch", "mlflow"} <= set(script_needs(script).modules)


# --- each env is the right one -----------------------------------------------------

# Big distributions that a rule's env leaves out when its code does not need them.
HEAVY = {"torch": "torch", "mlflow": "mlflow"}
# Envs that must stay without torch, whatever rules use them.
TORCH_FREE = {"data.yaml", "analysis.yaml", "tracking.yaml"}


def test_no_two_env_files_are_the_same() -> None:
    seen: dict[tuple, str] = {}
    for path in env_files():
        env = Env.load(path)
        key = (tuple(sorted(env.conda.values())), tuple(sorted(env.provides())))
        assert key not in seen, f"{path.name} installs the same as {seen.get(key)}"
        seen[key] = path.name


def test_pins_live_in_pyproject_only() -> None:
    """An env names only conda's python, pip and the programs the code runs;
    every Python distribution comes through mmalign's pyproject.toml."""
    allowed = {"python", "pip", *EXECUTABLES.values()}
    for path in env_files():
        env = Env.load(path)
        assert set(env.conda) <= allowed, (
            f"{path.name}: conda packages {sorted(set(env.conda) - allowed)}: pin Python "
            "distributions in pyproject.toml (an extra), and name programs in EXECUTABLES"
        )
        assert all(_is_local(line) for line in env.pip), (
            f"{path.name}: pip {env.pip}: install `-e ${{MMALIGN_ROOT}}[extras]` only"
        )
        assert sum(_is_local(line) for line in env.pip) == 1, f"{path.name}: one mmalign install"


@pytest.mark.parametrize("name", sorted(TORCH_FREE))
def test_light_envs_have_no_torch(name: str) -> None:
    provided = Env.load(ROOT / "envs" / name).provides()
    assert "torch" not in provided, f"envs/{name} installs torch"
    assert not provided & {"torchvision", "timm", "transformers"}, f"envs/{name}"


def test_each_rule_gets_no_heavy_distribution_it_does_not_need(workflow: dict) -> None:
    envs = {path: Env.load(path).provides() for path in env_files()}
    problems = []
    for rule in workflow["rules"]:
        if rule.script is None or rule.conda is None:
            continue
        needs = {
            d
            for module in script_needs(rule.script, reachable=True).modules
            for d in distributions_of(module)
        }
        extra = {d for d in HEAVY.values() if d in envs[rule.conda] and d not in needs}
        if extra:
            fits = [
                p.name
                for p, provided in envs.items()
                if not provided & extra
                and all(
                    distributions_of(m) & provided
                    for m in script_needs(rule.script, reachable=True).modules
                )
            ]
            problems.append(
                f"rule {rule.name}: its code needs no {', '.join(sorted(extra))}, yet "
                f"{rule.conda.name} installs it; envs that fit: {fits or 'none'}"
            )
    assert not problems, "\n".join(problems)


def test_the_test_extra_installs_the_whole_workflow() -> None:
    """`pip install -e '.[test]'` (the README's test command) and `.[all]` (its
    run command) install every extra's distributions."""
    optional = pyproject()["optional-dependencies"]
    for name in ("all", "test"):
        assert workflow_dependencies() <= pinned_dependencies((name,)), (
            f"extra {name!r} lacks {sorted(workflow_dependencies() - pinned_dependencies((name,)))}"
        )
    for path in env_files():
        for line in Env.load(path).pip:
            for extra in Env.extras(line):
                assert extra in optional, f"{path.name}: pyproject.toml has no extra {extra!r}"


def _installed_closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require, as installed here."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        if name == PACKAGE:
            continue  # what it brings is the extras', not its installed metadata's
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(normalize(req.name))
    return found


# Runs import statements and prints those that failed, in a Python started
# with -S (no site-packages, no .pth files) on a path that holds only part of
# this environment's site-packages (argv[1]) and the repository's src/.
WITHOUT = r"""
import json, sys
failed = []
for statement in json.loads(sys.argv[1]):
    try:
        exec(statement, {})
    except Exception as err:
        failed.append(f"{statement}: {type(err).__name__}: {err}")
print(json.dumps(failed))
"""


@functools.cache
def _site_packages_owners() -> tuple[Path, dict[str, set[str]]]:
    """site-packages, and the distributions that installed each entry of it."""
    owners: dict[str, set[str]] = {}
    site = None
    for dist in importlib.metadata.distributions():
        name = normalize(dist.metadata["Name"])
        for top in {file.parts[0] for file in dist.files or [] if file.parts}:
            if top != "..":
                owners.setdefault(top, set()).add(name)
        if site is None and name == "pyyaml":
            site = Path(dist.locate_file("")).resolve()
    assert site is not None, "pyyaml not found: where is site-packages?"
    return site, owners


def site_packages_without(lacking: set[str], into: Path) -> Path:
    """A folder of links to this environment's site-packages entries, less those
    that only the distributions ``lacking`` installed (their code and their
    metadata): to Python started on it, those are not installed, as in the env."""
    site, owners = _site_packages_owners()
    into.mkdir(parents=True, exist_ok=True)
    for entry in site.iterdir():
        who = owners.get(entry.name)
        if who and who <= lacking:
            continue
        if entry.suffix == ".pth" or entry.name.startswith(("__editable__", "mmalign")):
            continue
        (into / entry.name).symlink_to(entry)
    return into


@pytest.mark.parametrize("env_name", [p.name for p in env_files()])
def test_each_envs_scripts_import_without_what_the_env_lacks(
    workflow: dict, env_name: str, tmp_path: Path
) -> None:
    """Every import that the code of the env's rules may run, run by a Python
    that lacks the pinned distributions the env does not install: the walk's
    verdict, checked by Python (optional imports such as POT's of torch must
    fall back)."""
    path = ROOT / "envs" / env_name
    statements = sorted(
        {
            statement
            for rule in workflow["rules"]
            if rule.script and rule.conda == path
            for statement in script_needs(rule.script, reachable=True).statements
        }
    )
    if not statements:
        pytest.skip(f"no rule uses envs/{env_name}")
    provided = Env.load(path).provides()
    if "torch" in provided:
        # It lacks only what no torch rule uses (MLflow, Snakemake); the static
        # check above covers it, and importing torch's stack here takes ~20 s.
        pytest.skip(f"envs/{env_name} has torch: checked statically only")
    lacking = workflow_dependencies() - _installed_closure(provided)
    site = site_packages_without(lacking, tmp_path / "site-packages")
    proc = subprocess.run(
        [sys.executable, "-S", "-c", WITHOUT, json.dumps(statements)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT / 'src'}"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, f"envs/{env_name}, without {', '.join(sorted(lacking))}:\n" + "\n".join(
        failures
    )


# A stand-in for conda that answers what `snakemake --sdm conda -n` asks (no
# conda here; conda-forge cannot be reached): its info, version and channel
# priority. Anything else fails loudly.
FAKE_CONDA = """#!/bin/sh
case "$*" in
  "info --json") echo '{"conda_prefix": "%s", "platform": "linux-64"}';;
  "--version") echo "conda 25.1.1";;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}';;
  *) echo "fake conda cannot: $*" >&2; exit 1;;
esac
"""


def test_a_conda_dry_run_resolves_every_env(workflow: dict, tmp_path: Path) -> None:
    """`snakemake --sdm conda -n` finds and reads each rule's env file (with a
    stand-in conda: the envs are not built)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    conda = bin_dir / "conda"
    conda.write_text(FAKE_CONDA % (tmp_path / "conda"))
    conda.chmod(0o755)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("snakemake")),
            "-s",
            str(ROOT / "Snakefile"),
            "--sdm",
            "conda",
            "-n",
            "--cores",
            "1",
            "--quiet",
            "rules",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    created = {
        Path(p).resolve()
        for p in re.findall(r"Conda environment (\S+) will be created", proc.stdout + proc.stderr)
    }
    expected = {rule.conda for rule in workflow["rules"] if rule.conda}
    assert created == expected, (created, expected)


# --- resources ---------------------------------------------------------------------


def rule_blocks() -> dict[str, str]:
    """Each rule's text in rules/*.smk (snakefmt's layout: 4-space bodies)."""
    blocks = {}
    for path in [*sorted((ROOT / "rules").glob("*.smk")), ROOT / "Snakefile"]:
        for match in re.finditer(r"^rule (\w+):\n((?:(?:[ \t]+.*)?\n)*)", path.read_text(), re.M):
            blocks[match.group(1)] = match.group(2)
    return blocks


def uses_cuda(script: Path) -> bool:
    """Whether the code a script calls can put work on a CUDA device.

    Importing torch is not enough (the retrieval and merge scripts use it on
    the CPU); this follows calls by name from the script's `__main__` block
    through the functions of the mmalign modules it loads, and looks for
    `torch.cuda`/`"cuda"`. Following by name over-approximates, so a CPU rule
    may look like a GPU rule, never the reverse."""
    functions: dict[str, list[ast.AST]] = {}
    for path in script_needs(script).files[1:]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.ClassDef):  # Foo(...) runs Foo.__init__/__post_init__
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name in {
                        "__init__",
                        "__post_init__",
                    }:
                        functions.setdefault(node.name, []).append(item)

    def calls(node: ast.AST) -> set[str]:
        return {
            getattr(n.func, "attr", getattr(n.func, "id", ""))
            for n in ast.walk(node)
            if isinstance(n, ast.Call)
        }

    def cuda_in(node: ast.AST) -> bool:
        return any(
            (isinstance(n, ast.Attribute) and n.attr == "cuda")
            or (isinstance(n, ast.Constant) and n.value == "cuda")
            for n in ast.walk(node)
        )

    tree = ast.parse(script.read_text())
    if cuda_in(tree):
        return True
    frontier, seen = calls(tree), set()
    while frontier:
        name = frontier.pop()
        seen.add(name)
        for fn in functions.get(name, []):
            if cuda_in(fn):
                return True
            frontier |= calls(fn) - seen
    return False


def test_every_rule_declares_threads_memory_and_runtime(workflow: dict) -> None:
    blocks = rule_blocks()
    for rule in workflow["rules"]:
        assert re.search(r"^\s+threads:", blocks[rule.name], re.M), f"{rule.name}: no threads"
        for key in ("mem_mb", "runtime"):
            assert rule.resources.get(key), f"rule {rule.name}: no {key} in resources"


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_gpu_rules_declare_a_gpu(device: str, tmp_path: Path) -> None:
    """With every device set to cuda, a rule whose code can use CUDA declares gpu
    (one machine runs such jobs one at a time with --resources gpu=1; the SLURM
    profile asks for a GPU), and a rule that cannot use one does not hold one.
    With every device set to cpu, no rule holds a GPU (so on a machine without
    one, --resources gpu=1 does not serialise the jobs)."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for section in ("embed", "learn", "retrieval"):
        config.setdefault(section, {})["device"] = device
    rules = probe_workflow(tmp_path, yaml.safe_dump(config))["rules"]
    gpu = {rule.name for rule in rules if rule.script and uses_cuda(rule.script)}
    assert {"embed_shard", "learn", "mlp_ablation", "retrieval_protocol"} <= gpu
    for rule in rules:
        declared = rule.resources.get("gpu")
        if rule.name in gpu and device == "cuda":
            assert declared and declared >= 1, f"rule {rule.name} can use CUDA: declare gpu=1"
        else:
            assert not declared, f"rule {rule.name} declares gpu but runs on the CPU"
