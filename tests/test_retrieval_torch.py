"""The torch scoring path (retrieval.device) against the CPU path, and the device
and ``gpu`` resource it is given.

The CPU path (numba kernels, torch GEMMs on the CPU) is the reference. The torch
path runs on any torch device; here on the CPU device (every test) and on CUDA
where there is one (the tests marked ``cuda``). What must agree is what
:mod:`mmalign.metrics` guarantees: the same ranks, exactly, wherever the scores a
rank compares differ by more than float32 rounding; exact ties between identical
rows broken by the lower index on both paths.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmalign import devices
from mmalign.config import ConfigError, validate_config
from mmalign.devices import DeviceError, gpu_resources, gpu_visible
from mmalign.embeddings import Embeddings
from mmalign.layout import CALIBRATED_METRICS, FIXED_METRICS
from mmalign.metrics import Scorer, neg_chi2_torch
from mmalign.retrieval import (
    RetrievalOptions,
    Task,
    block_rows_for,
    build_protocol,
    make_scorer,
    score_protocol,
    score_task,
    scoring_device,
    topk,
    topk_both_directions,
)

from .test_plan import blocked_env
from .test_workflow import ROOT, tool

METRICS = FIXED_METRICS + CALIBRATED_METRICS
CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch sees none)")
TORCH_DEVICES = [CPU, pytest.param(torch.device("cuda"), marks=cuda, id="cuda")]


# ---- data with deliberate ties -------------------------------------------------


def tied_embeddings(data: str, n_images: int = 41, captions: int = 3, d: int = 13,
                    seed: int = 0) -> Embeddings:  # fmt: skip
    """Pairs with exact ties in both galleries: every third image is a copy of the
    one before it (so is its text's first caption: t2i and i2t ties), and the
    captions of image 1 repeat image 0's. ``grid``: values on multiples of 1/4
    (Manhattan sums exact in float32, many equal scores of distinct rows);
    ``normal``: continuous values. Odd sizes, so that blocks and vector lanes
    split everything unevenly."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n_images, d))
    image[2::3] = image[1::3][: len(image[2::3])]
    image_row = np.repeat(np.arange(n_images), captions)
    text = image[image_row] + 0.7 * rng.normal(size=(len(image_row), d))
    first = np.arange(0, len(text), captions)
    text[first[2::3]] = text[first[1::3]][: len(first[2::3])]
    text[captions : 2 * captions] = text[:captions]
    if data == "grid":
        image, text = np.round(image * 4) / 4, np.round(text * 4) / 4
    split = np.where(np.arange(n_images) % 4 == 3, "train", "test")
    ids = np.array([f"im{i}" for i in range(n_images)])
    texts = pd.DataFrame({
        "image_id": ids[image_row], "caption_idx": np.tile(np.arange(captions), n_images),
        "split": split[image_row], "eval_split": split[image_row], "image_row": image_row,
    })  # fmt: skip
    images = pd.DataFrame({"image_id": ids, "split": split, "eval_split": split})
    return Embeddings(image.astype(np.float32), text.astype(np.float32), images, texts, {})


def options(device: str | torch.device, rows: int, n_gallery: int, **kw) -> RetrievalOptions:
    """Options whose score blocks hold ``rows`` query rows of ``n_gallery`` items."""
    block_mb = (rows + 0.5) * 4 * n_gallery / 2**20
    assert block_rows_for(n_gallery, block_mb) == rows
    return RetrievalOptions(
        **{"device": device, "block_mb": block_mb, "csls_k": 4, "bootstrap": 0, **kw}
    )


def bank_for(task: Task) -> np.ndarray:
    return np.random.default_rng(9).normal(size=(17, task.queries.shape[1])).astype(np.float32)


# ---- what "the same up to rounding" means, checked -----------------------------


def full_scores(task: Task, metric: str, opts: RetrievalOptions) -> np.ndarray:
    """The ranking scores every query gets for every item (what score_task ranks by)."""
    if metric == "centered_cosine":
        task = Task(task.queries - task.queries.mean(0), task.gallery - task.gallery.mean(0),
                    task.rel_ptr, task.rel_idx)  # fmt: skip
        scorer = Scorer("cosine", torch.from_numpy(task.gallery), scoring_device(opts))
    else:
        scorer = make_scorer(metric, task, bank_for(task), opts)
    out = torch.empty(task.n_queries, len(task.gallery), device=scorer.block_device)
    return scorer.block(torch.from_numpy(task.queries).to(scorer.block_device), out).cpu().numpy()


def assert_same_ranks_up_to_rounding(
    task: Task, expected: np.ndarray, got: np.ndarray, ref: np.ndarray, other: np.ndarray
) -> None:
    """``got`` (from scores ``other``) equals ``expected`` (from ``ref``) for every
    relevant item, except where other items (rows unlike its row) score so close
    to it that the two paths' disagreement on the pair could swap them; there the
    rank may move by at most their number. The disagreement itself must be float32
    rounding."""
    err = np.abs(other.astype(np.float64) - ref)
    assert (err.max(1) <= 1e-5 * np.maximum(np.abs(ref).max(1), 1)).all(), "more than rounding"
    for i in range(task.n_queries):
        for slot in range(task.rel_ptr[i], task.rel_ptr[i + 1]):
            j = task.rel_idx[slot]
            close = np.abs(ref[i] - ref[i, j]) <= err[i] + err[i, j]
            close &= ~(task.gallery == task.gallery[j]).all(1)  # identical rows tie exactly
            assert abs(int(got[slot]) - int(expected[slot])) <= close.sum(), (i, j)


def exact_on(device: torch.device, metric: str, data: str) -> bool:
    """Where the torch path must give bitwise the CPU path's scores: on the CPU
    device the matrix-product metrics run the same ops; Manhattan's sums of
    quarters are exact in any order; chi-square's CPU kernel divides by a
    fastmath reciprocal, never bitwise IEEE."""
    if metric == "manhattan":
        return data == "grid"
    return device.type == "cpu" and metric != "chi2"


# ---- the torch path equals the CPU path ------------------------------------------


@pytest.mark.parametrize("device", TORCH_DEVICES, ids=str)
@pytest.mark.parametrize("data", ["grid", "normal"])
@pytest.mark.parametrize("rows", [1, 7, 500])  # one query per block, uneven blocks, one block
@pytest.mark.parametrize("metric", METRICS)
def test_torch_path_ranks_equal_the_cpu_path(
    metric: str, rows: int, data: str, device: torch.device
) -> None:
    emb = tied_embeddings(data)
    protocol = build_protocol(emb, "multicaption", RetrievalOptions(multicaption_split="test"))
    ties = 0
    # t2i: one relevant image per caption query; i2t: three relevant captions per image
    for task in (protocol.t2i, protocol.i2t):
        cpu_opts = options("cpu", rows, len(task.gallery))
        torch_opts = options(device, rows, len(task.gallery))
        bank = bank_for(task)
        occurrence = [np.zeros(len(task.gallery), dtype=np.int64) for _ in range(2)]
        expected = score_task(task, metric, bank, cpu_opts, occurrence[0])
        got = score_task(task, metric, bank, torch_opts, occurrence[1])
        ref, other = full_scores(task, metric, cpu_opts), full_scores(task, metric, torch_opts)
        if exact_on(device, metric, data):
            np.testing.assert_array_equal(other, ref)
            np.testing.assert_array_equal(got, expected)
        if exact_on(device, metric, data) and device.type == "cpu":
            # top-k membership among exact ties at the 10th place is each device's own
            np.testing.assert_array_equal(occurrence[1], occurrence[0])
        assert_same_ranks_up_to_rounding(task, expected, got, ref, other)
        # The ties are there: relevant items with an identical row at a lower index.
        ties += sum((task.gallery[:j] == task.gallery[j]).all(1).any() for j in task.rel_idx)
    assert ties > 0


def test_the_cpu_path_is_what_cpu_and_auto_without_a_gpu_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    task = build_protocol(tied_embeddings("normal"), "full", RetrievalOptions()).t2i
    for name in ("cpu", "auto"):
        assert scoring_device(RetrievalOptions(device=name)) is None
        for metric in ("manhattan", "chi2"):
            scorer = make_scorer(metric, task, None, RetrievalOptions(device=name))
            assert scorer.device is None and scorer.gallery_np is not None  # the numba kernels
    torch_scorer = make_scorer("chi2", task, None, RetrievalOptions(device=CPU))
    assert torch_scorer.device == CPU and torch_scorer.gallery_np is None


@pytest.mark.parametrize("device", TORCH_DEVICES, ids=str)
@pytest.mark.parametrize("protocol", ["subset", "multicaption"])
def test_torch_path_gives_the_cpu_paths_retrieval_rows(protocol: str, device: torch.device) -> None:
    """hit@K, precision, recall, nDCG, MRR, ranks and their bootstrap intervals, every
    metric, both directions, and the per-query ranks and k-occurrences behind them.
    Continuous data (ties only between identical rows): no two other items score
    within rounding of each other, so chi-square's rows must be equal too."""
    emb = tied_embeddings("normal", n_images=37, captions=2, d=11, seed=4)
    n = len(emb.text)
    frames, sinks = [], []
    for name in ("cpu", device):
        sink: list = []
        opts = options(name, 5, n, bootstrap=50, ks=(1, 3, 10), subset_size=24)
        frames.append(score_protocol(emb, protocol, opts, "d", "e", sink))
        sinks.append(sink)
    exact = device.type == "cpu"  # on CUDA every score moves by rounding
    if exact:
        pd.testing.assert_frame_equal(frames[1], frames[0])
    else:
        hits = [f[f["measure"] == "hit"].reset_index(drop=True) for f in frames]
        pd.testing.assert_frame_equal(hits[1], hits[0], atol=0.05)
    assert set(frames[0]["metric"]) == set(METRICS) and frames[0]["value"].notna().all()
    for a, b in zip(*sinks, strict=True):
        assert a.label == b.label
        if exact:
            np.testing.assert_array_equal(b.ranks, a.ranks)
            np.testing.assert_array_equal(b.occurrence, a.occurrence)


@pytest.mark.parametrize("device", TORCH_DEVICES, ids=str)
@pytest.mark.parametrize("metric", FIXED_METRICS)
def test_torch_top_k_equals_the_cpu_top_k(metric: str, device: torch.device) -> None:
    """Best-first top-k, ties by lower index, in one direction and in both, with
    query blocks that split the queries unevenly (the column merge across them)."""
    emb = tied_embeddings("grid", n_images=53, captions=1, d=9, seed=2)
    q, g = emb.text, emb.image
    cpu = Scorer(metric, torch.from_numpy(g))
    dev = Scorer(metric, torch.from_numpy(g), device)
    block_mb = 6.5 * 4 * len(g) / 2**20  # 6 query rows per block
    for k in (1, 4, 60):
        (v0, i0), (v1, i1) = topk(cpu, q, k, block_mb), topk(dev, q, k, block_mb)
        both0, both1 = (topk_both_directions(s, q, k, block_mb) for s in (cpu, dev))
        if exact_on(device, metric, "grid"):
            np.testing.assert_array_equal(i1, i0)
            np.testing.assert_array_equal(v1, v0)
            for (a_v, a_i), (b_v, b_i) in zip(both0, both1, strict=True):
                np.testing.assert_array_equal(b_i, a_i)
                np.testing.assert_array_equal(b_v, a_v)
        else:
            np.testing.assert_allclose(v1, v0, rtol=1e-5, atol=1e-5)
            for (a_v, _), (b_v, _) in zip(both0, both1, strict=True):
                np.testing.assert_allclose(b_v, a_v, rtol=1e-5, atol=1e-5)
    # The duplicated rows: image 2 is image 1, so any query's list holds 1 before 2.
    _, idx = topk(dev, q, len(g), block_mb)
    pos = np.argsort(idx, axis=1)
    assert (pos[:, 1] < pos[:, 2]).all()


@cuda
def test_chi2_on_cuda_is_bitwise_the_chi2_on_the_cpu_device() -> None:
    emb = tied_embeddings("normal", n_images=64, captions=1, d=37, seed=5)
    q, g = torch.from_numpy(emb.text), torch.from_numpy(emb.image)
    on_cpu = neg_chi2_torch(q, g.T.contiguous(), torch.empty(len(q), len(g)))
    gpu = torch.device("cuda")
    out = torch.empty(len(q), len(g), device=gpu)
    on_gpu = neg_chi2_torch(q.to(gpu), g.T.contiguous().to(gpu), out).cpu()
    assert torch.equal(on_gpu, on_cpu)


@cuda
def test_cuda_scoring_leaves_the_matmul_precision_as_it_was() -> None:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 allowed: scoring must not use it
    try:
        emb = tied_embeddings("normal")
        task = build_protocol(emb, "full", RetrievalOptions()).t2i
        ref = full_scores(task, "cosine", RetrievalOptions(device="cpu"))
        other = full_scores(task, "cosine", RetrievalOptions(device="cuda"))
        np.testing.assert_allclose(other, ref, rtol=0, atol=1e-6)  # TF32 would be ~1e-3 off
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


# ---- which device -------------------------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_without_a_gpu_and_cpu_are_the_cpu_path(no_gpu: None) -> None:
    assert scoring_device(RetrievalOptions(device="auto")) is None
    assert scoring_device(RetrievalOptions(device="cpu")) is None
    assert scoring_device(RetrievalOptions(device=CPU)) == CPU  # the torch path, asked in code


def test_auto_and_cuda_with_a_gpu_are_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("auto", "cuda"):
        assert scoring_device(RetrievalOptions(device=name)) == torch.device("cuda")
    assert scoring_device(RetrievalOptions(device="cpu")) is None


def test_cuda_without_a_gpu_is_an_error_naming_the_key_and_the_fix(no_gpu: None) -> None:
    message = r"^retrieval\.device is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'"
    with pytest.raises(DeviceError, match=message):
        scoring_device(RetrievalOptions(device="cuda"))
    emb = tied_embeddings("normal")
    with pytest.raises(DeviceError, match=message):
        score_protocol(emb, "full", RetrievalOptions(device="cuda", bootstrap=0), "d", "e")


def test_the_config_key_reaches_the_options() -> None:
    config = {"datasets": {"d": {"kind": "folder"}},
              "encoders": {"e": {"kind": "hf_clip", "model": "m"}},
              "retrieval": {"device": "cuda"}}  # fmt: skip
    validate_config(config)
    assert RetrievalOptions.from_config(config["retrieval"], 0).device == "cuda"
    config["retrieval"]["device"] = "tpu"
    with pytest.raises(ConfigError, match=r"retrieval\.device: 'tpu' is not one of"):
        validate_config(config)


# ---- the rules' gpu resource ----------------------------------------------------------


@pytest.fixture
def gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /proc/driver/nvidia/gpus, empty (no GPU) until a test adds one."""
    folder = tmp_path / "gpus"
    folder.mkdir()
    monkeypatch.setattr(devices, "NVIDIA_GPUS", folder)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return folder


def test_gpu_resources_follow_the_device(gpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_resources("cuda") == {"gpu": 1}  # asked for: declared, GPU or not
    assert gpu_resources("cpu") == {} and gpu_resources("auto") == {}
    (gpus / "0000:17:00.0").mkdir()
    assert gpu_resources("auto") == {"gpu": 1} and gpu_resources("cpu") == {}
    for hidden in ("", "-1", "NoDevFiles"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert not gpu_visible() and gpu_resources("auto") == {}, hidden
    for shown in ("0", "1,0", "GPU-5b1c2d3e", "MIG-0f1e"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", shown)
        assert gpu_visible(), shown
    monkeypatch.setattr(devices, "NVIDIA_GPUS", gpus / "absent")
    assert not gpu_visible()


def planned_resources(tmp_path: Path, device: str) -> dict[str, set[str]]:
    """rule -> the resource lines of its jobs in a dry run of the default config
    with retrieval.device set, planned with torch unimportable."""
    override = tmp_path / f"{device}.yaml"
    override.write_text(f"retrieval:\n  device: {device}\n")
    env = blocked_env(tmp_path / f"blocked_{device}")
    cmd = [tool("snakemake"), "--snakefile", str(ROOT / "Snakefile"), "-n", "--forceall",
           "--configfile", str(ROOT / "config.yaml"), str(override)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=rule \w+:)", proc.stdout):
        rule = re.match(r"rule (\w+):", block)
        line = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and line:
            found.setdefault(rule.group(1), set()).add(line.group(1))
    return found


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_the_rules_that_score_declare_a_gpu_as_the_device_says(tmp_path: Path, device: str) -> None:
    planned = planned_resources(tmp_path, device)
    wanted = "gpu" in gpu_resources(device)  # auto: as this machine shows a GPU
    assert device != "cuda" or wanted
    for rule in ("retrieval_protocol", "gap_shift"):
        assert planned[rule], rule
        for line in planned[rule]:
            assert ("gpu=1" in line.split(", ")) == wanted, (rule, line)
    for rule in ("retrieval", "paired", "geometry"):  # no scoring: never a GPU
        assert not any("gpu=" in line for line in planned[rule]), rule
