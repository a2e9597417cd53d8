"""`snakemake --report`: the self-contained HTML report of a tiny study, opened in
headless Chromium.

Checked at the end of the tiny-study test (tests/test_workflow.py), on its run.
The report is one HTML file: Snakemake embeds every result as a data URI in a
JSON object (``var results = {...}``), the categories in another, and React
draws the page from them. The test reads those objects, then lets Chromium
render the page and drives it as a reader clicks it (each category and
subcategory, each figure shown), and checks what the rendered DOM holds.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

STAGES = {"Data", "Embedding", "Retrieval", "Geometry", "Representation", "Gap shift", "Learned"}

# Appended to a copy of the report: what a reader's clicks do, through the
# report's own app (the menu's and the eye buttons' onClick handlers call the
# same setView / showResultInfo), and a <pre id="probe"> with what was shown.
DRIVER = """
<script>
(async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const waitFor = async (find) => {
    for (let i = 0; i < 100; i++) {
      const found = find();
      if (found) return found;
      await sleep(50);
    }
    return null;
  };
  const navText = () => document.querySelector("#app nav").innerText;
  const probe = { menu: null, listed: {}, images: {}, caption: null, error: null };
  try {
    await waitFor(() => document.querySelector("#app nav"));  // React renders asynchronously
    probe.menu = navText();
    for (const category of Object.keys(categories)) {
      probe.listed[category] = {};
      for (const subcategory of Object.keys(categories[category])) {
        app.setView({ navbarMode: "menu" });
        await sleep(100);
        app.setView({ navbarMode: "subcategory", category, subcategory });
        await sleep(200);
        probe.listed[category][subcategory] = navText();
      }
    }
    for (const [path, entry] of Object.entries(results)) {
      if (entry.mime_type !== "image/png") continue;
      app.setView({ content: "img", contentPath: entry.data_uri, resultPath: path });
      const shown = await waitFor(() => {
        const img = document.querySelector("#app img[src^='data:image/png']");
        return img && img.src === entry.data_uri && img.complete && img.naturalWidth ? img : null;
      });
      probe.images[path] = shown ? shown.naturalWidth : 0;
    }
    const tsne = "results/openclipart/minilm_effnet_pca384/figures/tsne.png";
    app.setView({ navbarMode: "menu" });
    await sleep(100);
    app.setView({ navbarMode: "subcategory", category: "Geometry", subcategory: "t-SNE (Fig. 2)" });
    await sleep(200);
    app.showResultInfo(tsne);
    await sleep(200);
    probe.caption = navText();
    app.setView({ content: "img", contentPath: results[tsne].data_uri, resultPath: tsne });
    await sleep(500);
  } catch (err) {
    probe.error = String(err.stack || err);
  }
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
})();
</script>
"""


def embedded(page: str, name: str) -> dict:
    """One of the JSON objects Snakemake writes into the page (``var <name> = {...};``)."""
    found = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', page, re.S)
    assert found, f"no `var {name}` in the report"
    return json.loads(found.group(1))


def chromium(page: Path, folder: Path, *args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={folder / 'profile'}",
            "--window-size=1400,900",
            "--virtual-time-budget=30000",
            *args,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def app_dom(dom: str) -> str:
    """The rendered app: the #app element, without the page's scripts."""
    start = dom.index('<div id="app">')
    return dom[start : dom.index("<script", start)]


def check_snakemake_report(folder: Path, common: list[str], tmp_path: Path) -> None:
    """The Snakemake report of the tiny study run in ``folder`` (with ``common``,
    its snakemake arguments) shows every figure and table by stage."""
    out = folder / "results" / "report.html"
    from .test_workflow import snakemake

    proc = snakemake(*common, "--report", str(out), cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = out.read_text()

    # What Snakemake embedded: every figure (PNG) and every table, by stage.
    results, categories = embedded(page, "results"), embedded(page, "categories")
    assert set(categories) == STAGES | {"Report"}, "a stage is missing or an output unmarked"
    assert all("Other" not in subs for subs in categories.values())
    filed = {
        path: (c, s) for c, subs in categories.items() for s, ps in subs.items() for path in ps
    }
    figures = sorted(
        str(p.relative_to(folder)) for p in (folder / "results").glob("**/figures/*.png")
    )
    assert len(figures) >= 16  # 7 per unit, the t-SNE grid and the precision bounds
    for figure in figures:
        assert results[figure]["mime_type"] == "image/png", figure
        assert results[figure]["data_uri"].startswith("data:image/png;"), figure
        assert results[figure]["caption"], f"{figure} has no caption"
    assert filed["results/openclipart/minilm_effnet/figures/tsne.png"] == (
        "Geometry",
        "t-SNE (Fig. 2)",
    )
    assert filed["results/openclipart/minilm_effnet/figures/gap_shift.png"][0] == "Gap shift"
    assert filed["results/openclipart/minilm_effnet/figures/mlp_ablation.png"][0] == "Learned"
    assert filed["results/openclipart/minilm_effnet/figures/recall_at_k.png"][0] == "Retrieval"
    tables = sorted(p.name for p in (folder / "results" / "tables").iterdir() if p.suffix)
    assert {"table2_geometry.csv", "table3_t2i_hit.md", "beyond_gap_shift.md"} <= set(tables)
    for table in tables:
        category, subcategory = filed[f"results/tables/{table}"]
        assert subcategory == "tables" and category in STAGES, f"{table} filed under {category}"
    assert filed["results/tables/table2_geometry.csv"][0] == "Geometry"
    assert filed["results/tables/beyond_alignment_measures.md"][0] == "Representation"
    assert filed["results/report.md"] == ("Report", "summary")
    assert filed["results/openclipart/skipped.csv"] == ("Data", "openclipart")
    assert filed["results/openclipart/minilm_effnet/embeddings/meta.json"][0] == "Embedding"
    caption = results["results/openclipart/minilm_effnet/figures/tsne.png"]["caption"]
    assert "Figure 2 for openclipart / minilm_effnet" in caption
    assert "t-SNE of 10 seeded pairs" in caption  # the tiny study's tsne_samples
    assert "table3_t2i_hit" in results["results/tables/table3_t2i_hit.md"]["caption"]

    # The page as it opens: the menu lists every stage; the description is drawn.
    opened = chromium(out, tmp_path, "--dump-dom")
    assert opened.returncode == 0, opened.stderr
    shown = app_dom(opened.stdout)
    for category in categories:
        assert f"<span>{html.escape(category)}</span>" in shown, category
    assert "image-text embedding alignment and cross-modal retrieval" in shown
    assert "minilm_effnet_pca384" in shown  # the config's encoders, named in the description

    # Driven as a reader clicks it: each stage's listing, each figure drawn.
    driven = tmp_path / "driven.html"
    end = page.rindex("</body>")
    driven.write_text(page[:end] + DRIVER + page[end:])
    dom = chromium(driven, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, "the driver did not finish: " + dom.stderr[-2000:]
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["error"] is None, probe["error"]
    for category in STAGES:
        assert category in probe["menu"]
    geometry = probe["listed"]["Geometry"]
    assert {"tsne", "cosine_matrix", "retrieval_t2i", "retrieval_i2t"} <= set(
        " ".join(geometry.values()).split()
    )
    assert "minilm_effnet_pca384" in geometry["t-SNE (Fig. 2)"]  # the encoder toggle
    assert "table3_t2i_hit" in probe["listed"]["Retrieval"]["tables"]
    assert "skipped inputs" in probe["listed"]["Data"]["openclipart"]
    assert "report.md" in probe["listed"]["Report"]["summary"]
    # Every embedded PNG decodes in the browser (an <img> of non-zero width).
    assert set(probe["images"]) == set(figures)
    assert all(width > 100 for width in probe["images"].values()), probe["images"]
    assert "Figure 2 for openclipart / minilm_effnet_pca384" in probe["caption"]

    # A screenshot of the same walk: the PCA pair's t-SNE beside its caption, not a blank page.
    shot = tmp_path / "report.png"
    chromium(driven, tmp_path, f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 10_000
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10
    right = pixels[:, pixels.shape[1] // 3 :]  # the content pane, right of the menu
    assert (right < 200).mean() > 0.01, "no figure drawn in the content pane"
