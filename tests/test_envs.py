"""Every rule's conda env provides what its script needs; every rule declares
the resources a cluster scheduler needs.

A rule's script runs in its env under `--sdm conda`, which these tests cannot
build here (no conda), so they check the env files statically, against what
the scripts really import: each script's imports, and transitively those of
the mmalign modules it uses, are mapped to the distributions that provide them
(as installed in this environment), and the rule's env must list each one,
either itself or through mmalign's pinned dependencies in pyproject.toml when
it installs mmalign (`pip: -e <repository>`). A module imported directly must
be a direct dependency: relying on another package's requirement breaks the
day that package drops it.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
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
            "resources": {
                name: res.value if isinstance(res.value, int) else None
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
    resources: dict[str, int | None]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The workflow's rules (those that run something) and the env vars it sets."""
    workdir = tmp_path_factory.mktemp("probe")  # the API writes .snakemake/ there
    (workdir / "config.yaml").write_text((ROOT / "config.yaml").read_text())
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


def imported_modules(path: Path) -> set[str]:
    """Every module that ``path`` imports, at any depth in the file (lazy
    imports inside functions too), with relative imports made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.is_relative_to(SRC) else ""
    if path.is_relative_to(SRC) and path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.add(module)
            # `from mmalign.datasets import coco` imports the submodule coco.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def called_programs(path: Path) -> set[str]:
    """Programs named as literals in shutil.which("x") or subprocess.run(["x", ...])."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
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


@dataclass
class Needs:
    """What a script needs: third-party modules (with the mmalign module that
    imports each), programs, and the mmalign source files it loads."""

    modules: dict[str, str] = field(default_factory=dict)
    programs: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def script_needs(script: Path) -> Needs:
    needs = Needs()
    queue, seen = [script], {script}
    while queue:
        path = queue.pop()
        needs.files.append(path)
        where = path.relative_to(ROOT).as_posix()
        for program in called_programs(path):
            needs.programs.setdefault(program, where)
        for module in sorted(imported_modules(path)):
            top = module.split(".")[0]
            if top == PACKAGE:
                # A submodule import runs every enclosing package's __init__ too.
                parts = module.split(".")
                for i in range(1, len(parts) + 1):
                    file = module_file(".".join(parts[:i]))
                    if file and file not in seen:
                        seen.add(file)
                        queue.append(file)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                needs.modules.setdefault(top, where)
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


def pinned_dependencies() -> set[str]:
    return {normalize(Requirement(dep).name) for dep in pyproject()["dependencies"]}


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
            spec = re.sub(r"^(-e|--editable)\s+", "", line.strip())
            if spec == line.strip() and not spec.startswith((".", "/", "$")):
                continue  # a PyPI requirement, not a local folder
            spec = re.sub(
                r"\$\{([A-Z0-9_]+)\}", lambda m: env_vars.get(m.group(1), m.group(0)), spec
            )
            found.append((pip_cwd / spec).resolve())
        return found

    def provides(self) -> set[str]:
        """Distributions the env installs. A local `-e` install counts as
        mmalign with its pinned dependencies (that it reaches this repository
        is test_envs_install_mmalign_from_this_repository's business)."""
        names = {CONDA_TO_PYPI.get(name, name) for name in self.conda}
        names |= {normalize(Requirement(p).name) for p in self.pip if not _is_local(p)}
        if any(_is_local(p) for p in self.pip):
            names |= pinned_dependencies() | {PACKAGE}
        return names


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
        needs = script_needs(rule.script)
        env_name = rule.conda.relative_to(ROOT)
        for module, where in sorted(needs.modules.items()):
            dists = distributions_of(module)
            if not dists:
                problems.append(f"{where} imports {module}, which no installed distribution has")
            elif not dists & provided:
                problems.append(
                    f"rule {rule.name}: {where} imports {module} (distribution "
                    f"{'/'.join(sorted(dists))}), which neither {env_name} nor, through "
                    "mmalign, pyproject.toml's dependencies list"
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
    rsvg-convert through them."""
    needs = script_needs(ROOT / "scripts/embed_shard.py")
    assert {"torch", "timm", "transformers", "PIL", "numpy"} <= set(needs.modules)
    assert "rsvg-convert" in needs.programs
    assert {"torch"} <= distributions_of("torch") and "pillow" in distributions_of("PIL")


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


def test_gpu_rules_declare_a_gpu(workflow: dict) -> None:
    """A rule whose code can use CUDA declares gpu (one machine runs such jobs
    one at a time with --resources gpu=1; the SLURM profile asks for a GPU);
    a rule that cannot use one does not hold one."""
    gpu = {rule.name for rule in workflow["rules"] if rule.script and uses_cuda(rule.script)}
    assert "embed_shard" in gpu
    for rule in workflow["rules"]:
        declared = rule.resources.get("gpu")
        if rule.name in gpu:
            assert declared and declared >= 1, f"rule {rule.name} can use CUDA: declare gpu=1"
        else:
            assert not declared, f"rule {rule.name} declares gpu but its code never uses CUDA"
