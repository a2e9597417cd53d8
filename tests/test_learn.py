"""Learned similarities and alignment heads: losses by hand, the schedule and
early stopping on scripted losses, determinism, a resumable Optuna study, and
alignment that recovers a known linear relation."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mmalign.config import validate_config
from mmalign.embed import Embeddings, write_embeddings
from mmalign.learn import learn_job
from mmalign.learn.align import (
    AlignOptions,
    LinearOptions,
    blockwise_info_nce,
    load_heads,
    run_align_variant,
    run_linear_variant,
    symmetric_info_nce,
    train_align,
)
from mmalign.learn.common import (
    EarlyStopping,
    LearnError,
    PairSplit,
    PairSplits,
    fused_on,
    pair_splits,
    paper_lr_factor,
    result_frame,
    write_safetensors,
)
from mmalign.learn.mlp import (
    MLPOptions,
    SimilarityMLP,
    all_pairs_estimate,
    contrastive_loss,
    eq1_loss,
    mse_loss,
    open_study,
    run_mlp_variant,
    sample_negatives,
    train_mlp,
    validation_loss,
)
from mmalign.retrieval import RESULT_COLUMNS, RetrievalOptions

CPU = torch.device("cpu")
ROPTS = RetrievalOptions(bootstrap=50, seed=0)
LABEL = {"dataset": "toy", "encoder": "toy_enc"}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is fastest, and stays fast on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def learn_defaults() -> dict:
    config = validate_config(
        {
            "datasets": {"t": {"kind": "folder", "root": "x"}},
            "encoders": {"e": {"kind": "hf_clip", "model": "m"}},
        }
    )
    return config["learn"]


def tiny_opts(**over: object) -> MLPOptions:
    base = MLPOptions.from_config(learn_defaults()["mlp"])
    fields = {**base.__dict__, "max_epochs": 2, "n_trials": 3, "batch_size": 16,
              "negatives": 3, "layers": (1, 2), "neurons": (4, 12), **over}  # fmt: skip
    return MLPOptions(**fields)


def split_of(text: np.ndarray, image: np.ndarray) -> PairSplit:
    rows = np.arange(len(text))
    return PairSplit(text.astype(np.float32), image.astype(np.float32), rows, rows)


def random_splits(n: tuple[int, int, int], dt: int, di: int, seed: int = 0) -> PairSplits:
    rng = np.random.default_rng(seed)
    parts = [split_of(rng.normal(size=(m, dt)), rng.normal(size=(m, di))) for m in n]
    return PairSplits(*parts)


def linear_relation(
    n: tuple[int, int, int], dt: int, di: int, latent: int = 6, noise: float = 0.02, seed: int = 0
) -> PairSplits:
    """Texts and images are two different linear maps of one latent code, plus noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(latent, dt)), rng.normal(size=(latent, di))
    parts = []
    for m in n:
        z = rng.normal(size=(m, latent))
        parts.append(
            split_of(
                z @ a + noise * rng.normal(size=(m, dt)), z @ b + noise * rng.normal(size=(m, di))
            )
        )
    return PairSplits(*parts)


def hit1(rows: list[dict], metric: str, direction: str) -> float:
    frame = pd.DataFrame(rows)
    pick = frame[(frame["metric"] == metric) & (frame["direction"] == direction)
                 & (frame["measure"] == "hit") & (frame["k"] == 1)]  # fmt: skip
    assert len(pick) == 1, (metric, direction)
    return float(pick["value"].iloc[0])


# ---- losses ------------------------------------------------------------------


def test_eq1_loss_by_hand() -> None:
    # Anchor 1: positive d=0.5 -> (1-0.5)^2/2 = 0.125; negatives -0.5 -> 0.125, 0 -> 0.5.
    # Anchor 2: positive d=1 -> 0; negatives 1 -> 2, -1 -> 0.
    d = torch.tensor([[0.5, -0.5, 0.0], [1.0, 1.0, -1.0]])
    n = 4  # items in the split: positive weight 1/4, negatives 3/4
    first = 0.125 / 4 + 3 / 4 * (0.125 + 0.5) / 2  # 0.265625
    second = 0.0 / 4 + 3 / 4 * (2.0 + 0.0) / 2  # 0.75
    assert contrastive_loss(d, n).item() == pytest.approx((first + second) / 2)
    assert eq1_loss(torch.tensor(0.2), True).item() == pytest.approx(0.32)
    assert eq1_loss(torch.tensor(0.2), False).item() == pytest.approx(0.72)


def test_mse_loss_by_hand() -> None:
    d = torch.tensor([[0.2, 0.1]])
    cos = torch.tensor([[0.5, -0.3]])
    # (0.2-0.5)^2 = 0.09 weighted 1/2; (0.1+0.3)^2 = 0.16 weighted 1/2.
    assert mse_loss(d, cos, 2).item() == pytest.approx(0.125)


def test_estimate_is_exact_when_every_negative_is_enumerated() -> None:
    """With each of the N-1 other items as a negative once, the estimate is Eq. 3-4 exactly."""
    rng = np.random.default_rng(1)
    n = 5
    d = torch.from_numpy(rng.uniform(-1, 1, size=(n, n)))
    identity = torch.eye(n, dtype=torch.bool)
    full = torch.where(identity, 0.5 * (1 - d) ** 2, 0.5 * (d + 1) ** 2).mean()  # 1/N^2 sum_ij
    neg = torch.stack([d[i][~identity[i]] for i in range(n)])
    estimate = all_pairs_estimate(eq1_loss(d.diagonal(), True), eq1_loss(neg, False), n)
    assert estimate.item() == pytest.approx(full.item(), rel=1e-12)


def test_negatives_are_never_the_anchor_and_cover_the_rest() -> None:
    g = torch.Generator().manual_seed(0)
    anchors = torch.arange(6).repeat(200)
    neg = sample_negatives(anchors, 6, 5, g)
    assert (neg != anchors[:, None]).all()
    assert neg.min() == 0 and neg.max() == 5
    for i in range(6):
        assert set(neg[anchors == i].flatten().tolist()) == set(range(6)) - {i}


def test_info_nce_by_hand_and_blockwise() -> None:
    eye = torch.eye(2)
    # logits = I: each row's CE is log(1 + e^-1), both directions alike.
    value = symmetric_info_nce(eye, eye, torch.tensor(0.0)).item()
    assert value == pytest.approx(math.log(1 + math.exp(-1)))
    rng = np.random.default_rng(2)
    t, v = torch.from_numpy(rng.normal(size=(7, 3))), torch.from_numpy(rng.normal(size=(7, 3)))
    scale = torch.tensor(math.log(5.0), dtype=torch.float64)
    assert blockwise_info_nce(t, v, scale, rows=3) == pytest.approx(
        symmetric_info_nce(t, v, scale).item(), rel=1e-9
    )


def test_mlp_is_an_mlp_on_the_concatenation() -> None:
    torch.manual_seed(0)
    model = SimilarityMLP(3, 5, [7, 4])
    t, v = torch.randn(6, 3), torch.randn(6, 5)
    plain = torch.nn.Sequential(model.input, *model.body)
    expected = torch.tanh(plain(torch.cat([t, v], dim=1)).squeeze(-1))
    assert torch.allclose(model(t, v), expected, atol=1e-6)
    assert model(t, v).abs().max() <= 1


# ---- schedule and early stopping ------------------------------------------------


def test_paper_lr_schedule() -> None:
    assert [paper_lr_factor(c) for c in (0, 2, 4)] == pytest.approx([1 / 2, 1 / 3, 1 / 5])
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, paper_lr_factor)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert seen == pytest.approx([5e-5 / (1 + 2 ** (0.5 * c)) for c in range(4)])


def run_stopper(losses: list[float], **kw: object) -> tuple[int | None, int]:
    stopper = EarlyStopping(**kw)  # type: ignore[arg-type]
    for epoch, loss in enumerate(losses):
        if stopper.step(loss):
            return epoch, stopper.best_epoch
    return None, stopper.best_epoch


def test_early_stopping_is_the_papers_rule() -> None:
    # Each epoch after the 2nd improves on the previous one, but by less than 1%:
    # five such epochs in a row (epochs 3-7) stop training at epoch 7.
    slow = [1.0, 0.9, 0.895, 0.89, 0.885, 0.88, 0.875, 0.87]
    assert run_stopper(slow, patience=5, min_delta=0.01) == (6, 6)
    # A >1% improvement resets the count; the best epoch's weights are kept.
    reset = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert run_stopper(reset, patience=5, min_delta=0.01) == (10, 5)
    # Never stalls for 5 epochs: runs to the end.
    assert run_stopper([1.0, 0.98, 0.985, 0.97, 0.96, 0.9], patience=5, min_delta=0.01) == (None, 5)
    # The paper's rule compares with the previous epoch: a zigzag resets it; "best" does not.
    zigzag = [1.0, 0.8, 0.9, 0.85, 0.9, 0.85]
    assert run_stopper(zigzag, patience=3, min_delta=0.0)[0] is None
    assert run_stopper(zigzag, patience=3, min_delta=0.0, against="best") == (4, 1)
    with pytest.raises(LearnError, match="diverged"):
        EarlyStopping(5, 0.01).step(math.nan)


def test_training_keeps_the_best_epoch_and_records_its_history() -> None:
    splits = random_splits((48, 12, 12), 4, 4)
    opts = tiny_opts(max_epochs=30, lr=5e-3, patience=2, min_delta=0.01)
    model, history = train_mlp(splits, [8], "contrastive", "t2i", opts, 1, 2, CPU)
    assert 1 <= history.epochs_run <= 30 and len(history.train_losses) == history.epochs_run
    assert history.best_val_loss == min(history.val_losses)
    if history.stopped_early:
        tail = history.val_losses[-3:]
        assert all(b >= a * 0.99 for a, b in itertools.pairwise(tail))
    from mmalign.learn.mlp import _PairTensors

    val = _PairTensors(splits.val, CPU)
    negatives = sample_negatives(torch.arange(12), 12, 3, torch.Generator().manual_seed(2))
    assert validation_loss(model, val, negatives, "t2i", "contrastive") == pytest.approx(
        history.best_val_loss, rel=1e-6
    )


# ---- determinism -----------------------------------------------------------------


def test_a_tiny_run_is_bit_identical_under_a_seed() -> None:
    splits = random_splits((40, 10, 10), 5, 3)
    runs = [
        train_mlp(splits, [9, 5], "contrastive", "i2t", tiny_opts(), 3, 4, CPU) for _ in range(2)
    ]
    (a, ha), (b, hb) = runs
    assert ha.val_losses == hb.val_losses and ha.train_losses == hb.train_losses
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    heads = [
        train_align(splits, AlignOptions(dim=4, hidden=8, epochs=3), 5, CPU)[0] for _ in range(2)
    ]
    for key, value in heads[0].state_dict().items():
        assert torch.equal(value, heads[1].state_dict()[key]), key
    other, _ = train_mlp(splits, [9, 5], "contrastive", "i2t", tiny_opts(), 4, 4, CPU)
    assert not torch.equal(other.input.weight, a.input.weight)


def test_the_fused_optimiser_trains_as_the_per_parameter_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch's fused Adam/AdamW (one kernel a step) against its reference
    implementation (``fused=None``: a pass per operation and parameter): the same
    weights up to float rounding."""
    splits = random_splits((40, 10, 10), 5, 3)

    def both() -> tuple[SimilarityMLP, torch.nn.Module]:
        mlp_model, _ = train_mlp(splits, [9, 5], "contrastive", "i2t", tiny_opts(), 3, 4, CPU)
        heads, _ = train_align(splits, AlignOptions(dim=4, hidden=8, epochs=3), 5, CPU)
        return mlp_model, heads

    assert fused_on(CPU) is True and fused_on(torch.device("meta")) is None
    fused = both()
    for module in ("mmalign.learn.mlp", "mmalign.learn.align"):
        monkeypatch.setattr(f"{module}.fused_on", lambda device: None)
    reference = both()
    for got, want in zip(fused, reference, strict=True):
        for key, value in want.state_dict().items():
            torch.testing.assert_close(got.state_dict()[key], value, rtol=1e-5, atol=1e-6)


# ---- the Optuna study ----------------------------------------------------------------


def test_the_study_resumes_where_it_stopped(tmp_path: Path) -> None:
    splits = random_splits((30, 8, 8), 4, 4)
    calls = []

    def study(folder: str, n_trials: int) -> tuple[dict, pd.DataFrame]:
        out = run_mlp_variant("mlp_mse", splits, tiny_opts(n_trials=n_trials), ROPTS, 0, CPU,
                              LABEL, tmp_path / folder)  # fmt: skip
        calls.append(out.summary["trials_run_now"])
        return out.summary, out.trials

    study("resumed", 2)  # "interrupted" after 2 of 4 trials
    summary, trials = study("resumed", 4)
    assert calls == [2, 2], "only the remaining trials ran"
    assert trials["state"].tolist() == ["COMPLETE"] * 4
    assert trials["number"].tolist() == [0, 1, 2, 3]
    _, straight = study("straight", 4)
    assert calls[-1] == 4
    cols = ["value", "params_n_layers", "params_n_units_l0"]
    # A resumed study proposes and scores exactly what an uninterrupted one does.
    pd.testing.assert_frame_equal(trials[cols], straight[cols])
    summary_again, _ = study("resumed", 4)
    assert calls[-1] == 0 and summary_again["best_trial"] == summary["best_trial"]
    for column in ("epochs_both", "stopped_early_both", "val_losses_both", "best_val_loss_both"):
        assert column in trials.columns
    assert all(
        len(v) == e for v, e in zip(trials["val_losses_both"], trials["epochs_both"], strict=True)
    )


def test_a_trial_left_running_is_failed_and_replaced(tmp_path: Path) -> None:
    splits = random_splits((30, 8, 8), 4, 4)
    folder = tmp_path / "study"
    first = run_mlp_variant(
        "mlp_contrastive", splits, tiny_opts(n_trials=1), ROPTS, 0, CPU, LABEL, folder
    )
    name = first.summary["study"]
    open_study(folder / "journal.log", name, 0).ask()  # a trial whose process was killed
    (folder / "journal.log.lock").symlink_to("journal.log")  # ... while holding the lock
    out = run_mlp_variant(
        "mlp_contrastive", splits, tiny_opts(n_trials=2), ROPTS, 0, CPU, LABEL, folder
    )
    assert out.trials["state"].tolist() == ["COMPLETE", "FAIL", "COMPLETE"]
    assert out.summary["trials_run_now"] == 1
    # The killed trial leaves a gap in the numbers, not in the proposals or the seeds.
    straight = run_mlp_variant(
        "mlp_contrastive", splits, tiny_opts(n_trials=2), ROPTS, 0, CPU, LABEL, tmp_path / "s"
    )
    cols = ["value", "params_n_layers", "params_n_units_l0"]
    complete = out.trials[out.trials["state"] == "COMPLETE"].reset_index(drop=True)
    pd.testing.assert_frame_equal(complete[cols], straight.trials[cols])
    pd.testing.assert_frame_equal(result_frame(out.rows), result_frame(straight.rows))
    assert set(out.summary["directions"]) == {"t2i", "i2t"}  # one MLP per direction


# ---- alignment ----------------------------------------------------------------------


def test_alignment_recovers_a_linear_relation_between_different_dimensions() -> None:
    splits = linear_relation((400, 100, 100), dt=12, di=20)
    opts = AlignOptions(
        dim=16, hidden=64, dropout=0.0, epochs=60, lr=3e-3, batch_size=100, patience=10
    )
    out = run_align_variant(splits, opts, ROPTS, 0, CPU, LABEL)
    for direction in ("t2i", "i2t"):
        assert hit1(out.rows, "align", direction) >= 0.9
        assert math.isnan(hit1(out.rows, "cosine", direction))  # 12-d vs 20-d: n/a
    linear = run_linear_variant(splits, LinearOptions(dims=(4, 6, 8), ridge=(1e-3,)), ROPTS, LABEL)
    for direction in ("t2i", "i2t"):
        assert hit1(linear.rows, "align_linear", direction) >= 0.95


def test_trained_heads_load_back_from_safetensors(tmp_path: Path) -> None:
    splits = linear_relation((60, 20, 20), dt=6, di=9)
    opts = AlignOptions(dim=4, hidden=8, dropout=0.1, epochs=2, batch_size=20)
    model, _ = train_align(splits, opts, 0, CPU)
    write_safetensors(model.state_dict(), {"variant": "align"}, tmp_path / "align.safetensors")
    loaded = load_heads(tmp_path / "align.safetensors", opts)
    text = torch.from_numpy(splits.test.text)
    torch.testing.assert_close(loaded.text(text), model.text(text), rtol=0, atol=0)
    assert not loaded.training


def test_raw_metrics_miss_what_alignment_finds_with_equal_dimensions() -> None:
    splits = linear_relation((400, 100, 100), dt=10, di=10, latent=10, seed=3)
    opts = AlignOptions(
        dim=16, hidden=None, dropout=0.0, epochs=60, lr=3e-3, batch_size=100, patience=10
    )
    out = run_align_variant(splits, opts, ROPTS, 0, CPU, LABEL)
    for direction in ("t2i", "i2t"):
        assert hit1(out.rows, "align", direction) >= 0.9
        for raw in ("cosine", "euclidean", "manhattan", "chi2"):
            assert hit1(out.rows, raw, direction) <= 0.2, raw
        assert hit1(out.rows, "align", direction) >= hit1(out.rows, "align_chi2", direction)


# ---- data and the job ----------------------------------------------------------------


def toy_embeddings(folder: Path, n: int, dt: int, di: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    splits = np.array(["train"] * (n - 2 * (n // 5)) + ["val"] * (n // 5) + ["test"] * (n // 5))
    rng.shuffle(splits)
    images = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "split": splits})
    # Two captions per image: only the first (caption_idx 0) is a learned pair.
    texts = pd.DataFrame({
        "image_id": np.repeat(images["image_id"], 2).to_numpy(),
        "caption_idx": np.tile([0, 1], n), "split": np.repeat(splits, 2),
        "image_row": np.repeat(np.arange(n), 2),
    })  # fmt: skip
    image = rng.normal(size=(n, di)).astype(np.float32)
    text = rng.normal(size=(2 * n, dt)).astype(np.float32)
    write_embeddings(folder, image, text, images, texts, {"dim_image": di, "dim_text": dt})
    return folder


def test_pairs_are_first_captions_split_by_the_manifest(tmp_path: Path) -> None:
    emb = Embeddings.load(toy_embeddings(tmp_path / "emb", 50, 3, 4))
    splits = pair_splits(emb, None, 0)
    assert splits.sizes() == {"train": 30, "val": 10, "test": 10}
    assert (splits.train.text_rows % 2 == 0).all()  # caption_idx 0 rows
    assert (splits.test.text_rows // 2 == splits.test.image_rows).all()
    assert set(emb.images["split"].to_numpy()[splits.val.image_rows]) == {"val"}
    sub = pair_splits(emb, 40, 0)
    assert sum(sub.sizes().values()) == 40 and sub.sizes() == pair_splits(emb, 40, 0).sizes()
    with pytest.raises(LearnError, match=r"emb: the 'test' split has 1 pair"):
        pair_splits(emb, 8, 1, where=str(tmp_path / "emb"))


@pytest.mark.parametrize("variant", ["mlp_mse", "mlp_contrastive", "align_linear"])
def test_learn_job_writes_its_outputs(tmp_path: Path, variant: str) -> None:
    folder = toy_embeddings(tmp_path / "emb", 40, 6, 5)
    cfg = learn_defaults()
    cfg["mlp"].update(n_trials=1, max_epochs=2, neurons=[4, 8], layers=[1, 2])
    cfg["linear"].update(dims=[2, 4])
    retrieval = {**RetrievalOptions().__dict__, "ks": [1, 5, 10], "bootstrap": 20}
    retrieval.pop("seed")
    out = {
        name: tmp_path / "learn" / f"{variant}.{name}"
        for name in ("json", "parquet", "safetensors")
    }
    learn = tmp_path / "learn"
    summary = learn_job(folder, variant, cfg, retrieval, 0, 1, out["json"], out["parquet"],
                        out["safetensors"], learn / f"{variant}.trials.parquet",
                        learn / f"{variant}.ranks.parquet", learn / f"{variant}.hubness.parquet",
                        learn / f"{variant}.optuna", LABEL)  # fmt: skip
    on_disk = json.loads(out["json"].read_text())
    assert on_disk["config"]["learn"] == cfg
    assert on_disk["pairs"] == {"train": 24, "val": 8, "test": 8}
    rows = pd.read_parquet(out["parquet"])
    assert list(rows.columns) == RESULT_COLUMNS and set(rows["protocol"]) == {"learned_test"}
    assert set(rows["direction"]) == {"t2i", "i2t"} and (rows["n_queries"] == 8).all()
    if variant == "mlp_mse":  # 6-d text vs 5-d image: the cosine target does not exist
        assert summary["status"] == "n/a" and rows["value"].isna().all()
        assert rows["note"].str.startswith("n/a: image 5-d vs text 6-d").all()
    else:
        assert summary["status"] == "ok" and rows["value"].notna().all()
        assert load_file(str(out["safetensors"]))
        assert len(pd.read_parquet(tmp_path / "learn" / f"{variant}.trials.parquet")) >= 1
        # One row per test query, direction and metric, the rows' hit@1 from the ranks.
        ranks = pd.read_parquet(learn / f"{variant}.ranks.parquet")
        scored = rows[rows["value"].notna()]
        assert len(ranks) == 8 * scored.groupby(["direction", "metric"]).ngroups
        hit1 = scored[(scored["measure"] == "hit") & (scored["k"] == 1)]
        recomputed = (ranks["rank"] == 1).groupby([ranks["direction"], ranks["metric"]]).mean()
        assert hit1.set_index(["direction", "metric"])["value"].to_dict() == pytest.approx(
            recomputed.to_dict()
        )
        hubness = pd.read_parquet(learn / f"{variant}.hubness.parquet")
        assert (hubness["n_gallery"] == 8).all() and len(hubness) == len(recomputed)
