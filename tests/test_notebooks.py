"""The audit notebooks run top to bottom on a finished run, and are committed without outputs.

Each notebook is executed with nbclient on a copy of the session's ``demo_run`` (a run of
pipelines/basic.yaml, which has no CLIP score), so that what the notebooks write (the HTML
report) stays out of the shared fixture. The kernel is this interpreter: a ``python3``
kernelspec that launches ``sys.executable`` is written into a temporary ``JUPYTER_PATH``, and the
test checks that the kernel really runs this environment's Python.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nbformat
import pyarrow.parquet as pq
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT = 120  # seconds, per cell
PROBE = "import sys\nprint('KERNEL_PREFIX=' + sys.prefix)"


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``python3`` kernelspec for this interpreter, found first through ``JUPYTER_PATH``."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (curate venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")


def execute(name: str, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>`` with ``CURATE_RUN=run_dir`` and a probe cell first."""
    monkeypatch.setenv("CURATE_RUN", str(run_dir))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.insert(0, new_code_cell(PROBE))
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, startup_timeout=60, kernel_name="python3",
                            allow_errors=True, resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(nb.cells)
              if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: cells raised {errors}"
    probe = text_of(nb.cells[0])
    assert f"KERNEL_PREFIX={sys.prefix}\n" in probe, f"the kernel runs another Python: {probe}"
    return nb


def text_of(cell: nbformat.NotebookNode) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            parts.append(o.data.get("text/plain", ""))
    return "".join(parts)


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)


@pytest.fixture
def run_copy(demo_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo_run, tmp_path / "run"))


@pytest.mark.usefixtures("kernel_env")
def test_audit_notebook_runs_on_a_basic_run(run_copy: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    nb = execute("audit_run.ipynb", run_copy, monkeypatch)
    out = "\n".join(text_of(c) for c in nb.cells)
    funnel = pq.read_table(run_copy / "funnel.parquet").to_pylist()
    kept = sum(pq.read_table(run_copy / "manifest", columns=["kept"])
               .column("kept").to_pylist())
    assert f"samples in 512, kept {kept} " in out
    for step in funnel:  # every funnel row, with its count, as a printed table row
        assert f"┆ {step['reason']} " in out and f"┆ {step['dropped']} " in out
    assert "funnel and manifest agree" in out
    assert "plotted: ['caption_words', 'caption_chars', 'lang_score', 'aspect_ratio']" in out
    assert "clip_score" not in out  # basic.yaml has none, and nothing asked for it
    assert images(nb) >= 2  # drops per reason, score histograms
    assert f"wrote {kept} uids to" in out
    report = run_copy / "report" / "index.html"
    assert f"report: {report}" in out and report.is_file()


@pytest.mark.usefixtures("kernel_env")
def test_thresholds_notebook_rethresholds_and_reshards(run_copy: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    nb = execute("choose_thresholds.ipynb", run_copy, monkeypatch)
    out = "\n".join(text_of(c) for c in nb.cells)
    kept = sum(pq.read_table(run_copy / "manifest", columns=["kept"])
               .column("kept").to_pylist())
    assert "score column: caption_words; pipeline rule: caption_too_few_words (> 2)" in out
    # at the current bound, the query reproduces the run's kept count
    assert f"at the current bound: {kept} (kept now: {kept})" in out
    assert images(nb) >= 2  # distribution, kept count vs threshold
    assert "just above (kept):" in out and "just below (dropped):" in out
    uid_file = next(line.split(" -> ")[1] for line in out.splitlines() if " uids -> " in line)
    n = int(next(line for line in out.splitlines() if " uids -> " in line).split()[0])
    uids = Path(uid_file).read_text().split()
    assert len(uids) == n and 0 < n < kept
    assert f"curate reshard --uids {uid_file} --run {run_copy} --out " in out
    assert "ReshardResult(wanted=20, written=20, missing=[], shards=1" in out


@pytest.mark.parametrize("name", ["audit_run.ipynb", "choose_thresholds.ipynb",
                                  "python_api.ipynb"])
def test_committed_notebooks_have_no_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
        assert not cell.metadata, f"cell metadata (execution times?): {cell.metadata}"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert set(nb.metadata) <= {"kernelspec", "language_info"}


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == ["audit_run.ipynb",
                                                                   "choose_thresholds.ipynb",
                                                                   "python_api.ipynb"]


@pytest.fixture
def demo_yaml_copy(demo_yaml_run: Path, tmp_path: Path) -> Path:
    """A copy of the selection of pipelines/demo.yaml itself (relative paths, CLIP score)."""
    return Path(shutil.copytree(demo_yaml_run, tmp_path / "run"))


@pytest.mark.usefixtures("kernel_env")
def test_audit_notebook_on_the_demo_pipeline(demo_yaml_copy: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in notebooks/, not where the pipeline ran: the threshold lines must still be
    there, in the notebook and in the report its last cell writes (issue 17, finding 3)."""
    nb = execute("audit_run.ipynb", demo_yaml_copy, monkeypatch)
    out = "\n".join(text_of(c) for c in nb.cells)
    assert "plotted: ['clip_score', 'caption_words', 'caption_chars', 'lang_score']" in out
    assert ("threshold lines: {'clip_score': ['≥ 0.45'], 'caption_words': ['> 2'], "
            "'caption_chars': ['> 5']}") in out
    report = demo_yaml_copy / "report" / "index.html"
    assert f"report: {report}" in out
    text = report.read_text()
    assert "clip_score ≥ 0.45 (clip_score_too_low)" in text and 'class="warn"' not in text


@pytest.mark.usefixtures("kernel_env")
def test_thresholds_notebook_on_the_demo_pipeline(demo_yaml_copy: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    nb = execute("choose_thresholds.ipynb", demo_yaml_copy, monkeypatch)
    out = "\n".join(text_of(c) for c in nb.cells)
    kept = sum(pq.read_table(demo_yaml_copy / "manifest", columns=["kept"])
               .column("kept").to_pylist())
    assert "score column: clip_score; pipeline rule: clip_score_too_low (≥ 0.45)" in out
    assert f"at the current bound: {kept} (kept now: {kept})" in out
    assert "ReshardResult(wanted=20, written=20, missing=[], shards=1" in out


@pytest.mark.usefixtures("kernel_env")
def test_python_api_notebook_runs_on_the_demo_pool(demo_pool: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """notebooks/python_api.ipynb: a pipeline from stage objects, its plan, a run, a scorer
    defined in the notebook and a plugin file scored on Ray, and a second selection."""
    monkeypatch.setenv("CURATE_POOL", str(demo_pool))
    monkeypatch.setenv("CURATE_OUT", str(tmp_path / "out"))
    nb = execute("python_api.ipynb", tmp_path, monkeypatch)
    out = "\n".join(text_of(c) for c in nb.cells)
    assert "same 10 stages as pipelines/basic.yaml: True" in out
    assert "pipeline basic (<python: basic>): valid" in out
    assert "Ray: not started (a run starts it for the 8 shards to score)" in out
    sel = tmp_path / "out" / "selections"
    kept = sum(pq.read_table(sel / "basic" / "manifest", columns=["kept"])
               .column("kept").to_pylist())
    assert f"Result('{sel / 'basic'}': {kept} of 512 samples kept)" in out
    assert f"manifest: 512 rows, {kept} kept" in out
    for name, computed, reused in (("image_info", 0, 8), ("caption_digits", 8, 0),
                                   ("caption_quotes_text", 8, 0)):
        assert f"  {name:<20} computed {computed}, reused {reused}" in out
    strict = pq.read_table(sel / "no_parrots" / "manifest").to_pylist()
    for r in strict:  # the two rules over the new scorers' columns, as written in the notebook
        if r["kept"]:
            assert not r["caption_quotes_text"] and r["caption_digit_share"] <= 0.3
        elif r["reason"] == "caption_spells_text":
            assert r["caption_quotes_text"]
    spells = sum(r["reason"] == "caption_spells_text" for r in strict)
    assert spells > 0 and sum(r["kept"] for r in strict) == kept - spells
    assert f"│ caption_spells_text ┆ {spells} " in out  # the last cell's comparison
