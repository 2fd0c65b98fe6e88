"""Stages from outside the package (issue 17, finding 5): a pipeline's ``imports:`` (a file
path, relative to the pipeline file) and the ``curate.stages`` entry points of an installed
package, each scoring on the session's Ray workers, which were started before the plugin was
loaded and cannot import it by name."""

from __future__ import annotations

import copy
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, curate_cli

import curate.plugins as plugins
from curate.config import load_pipeline, load_selection, pipeline_from_dict
from curate.errors import ConfigError
from curate.runner import run
from curate.stages import base

EXAMPLE = REPO / "examples" / "plugins" / "caption_digits.py"


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curate.demo.generator import make_demo_pool

    out = tmp_path_factory.mktemp("plugin_pool") / "pool"
    make_demo_pool(out, shards=2, samples_per_shard=16)
    return out


@pytest.fixture
def isolated_registry() -> Iterator[None]:
    """The stage registry and the loaded plugins as they were before the test."""
    registry = copy.deepcopy(base._REGISTRY)
    loaded = copy.deepcopy(plugins._LOADED.__dict__)
    modules = set(sys.modules)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(registry)
    plugins._LOADED.__dict__.update(loaded)
    for name in set(sys.modules) - modules:
        if name.startswith(("curate_plugin_", "curate_ep_")):
            del sys.modules[name]


def _worker_can_import(module: str) -> bool:
    import importlib.util

    import ray

    @ray.remote(num_cpus=0)
    def probe(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    return bool(ray.get(probe.remote(module)))


@pytest.mark.usefixtures("isolated_registry")
def test_a_file_plugin_scores_on_ray_workers(small_pool: Path, tmp_path: Path,
                                             ray_local: None, monkeypatch: pytest.MonkeyPatch,
                                             ) -> None:
    pipe_dir = tmp_path / "pipelines"
    pipe_dir.mkdir()
    rel = os.path.relpath(EXAMPLE, pipe_dir)  # relative to the pipeline file, not the cwd
    (pipe_dir / "digits.yaml").write_text(yaml.safe_dump({
        "name": "digits", "imports": [rel], "input": {"shards": str(small_pool / "*.tar")},
        "score": ["caption_stats", {"caption_digits": {"digits": "0123456789"}}],
        "select": [{"rule": "threshold", "column": "caption_digit_share", "max": 0.05,
                    "reason": "caption_has_digits"}],
        "output": {"write_shards": False}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pipeline = load_pipeline(pipe_dir / "digits.yaml")
    module = type(pipeline.scorer_stages()[1]).__module__
    assert module.startswith("curate_plugin_caption_digits_")
    assert not _worker_can_import(module)  # the worker gets the class by value, or not at all

    result = run(pipeline, tmp_path / "out", progress=False)
    assert result.scoring is not None and result.scoring.workers >= 1  # on Ray, not local
    assert result.scoring.scorers["caption_digits"].computed == 2
    rows = pq.read_table(result.dir / "manifest",
                         columns=["caption", "caption_digits", "caption_digit_share", "reason"]
                         ).to_pylist()
    assert len(rows) == 32
    for r in rows:
        caption = r["caption"] or ""
        n = sum(ch.isdigit() for ch in caption)
        assert r["caption_digits"] == n
        share = n / len(caption) if caption else 0.0
        assert r["caption_digit_share"] == pytest.approx(share, rel=1e-6)
        assert (r["reason"] == "caption_has_digits") == (share > 0.05 + 1e-7)
    # the saved pipeline names the plugin by its absolute path: it loads from any directory
    saved = yaml.safe_load((result.dir / "pipeline.yaml").read_text())
    assert saved["imports"] == [str(EXAMPLE.resolve())]
    monkeypatch.chdir(REPO)
    assert [s.stage.name for s in load_selection(result.dir / "pipeline.yaml").select] == [
        "threshold"]


def _write_package(site: Path, body: str, entry: str = "upper = curate_ep_upper") -> None:
    pkg = site / "curate_ep_upper"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(body)
    info = site / "curate_ep_upper-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: curate-ep-upper\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(f"[curate.stages]\n{entry}\n")


UPPER = '''"""A plugin package: scorer ``ep_caption_upper``."""
import pyarrow as pa
from curate.stages.base import SampleScorer, register
from curate_ep_upper.helpers import share


@register
class CaptionUpper(SampleScorer):
    """Share of the caption's letters that are capitals."""

    name = "ep_caption_upper"

    def inputs(self):
        return ("caption",)

    def outputs(self):
        return {"ep_upper_share": pa.float64()}

    def score_sample(self, sample):
        return {"ep_upper_share": share(sample["caption"] or "")}
'''

HELPERS = '''def share(text):
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0
'''


@pytest.mark.usefixtures("isolated_registry")
def test_an_entry_point_plugin_scores_on_ray_workers(small_pool: Path, tmp_path: Path,
                                                     ray_local: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    _write_package(site, UPPER)
    (site / "curate_ep_upper" / "helpers.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(site))
    assert not _worker_can_import("curate_ep_upper")  # only this process has it on sys.path

    pipeline = pipeline_from_dict({
        "name": "upper", "input": {"shards": str(small_pool / "*.tar")},
        "score": ["ep_caption_upper"], "output": {"write_shards": False}})
    cls = type(pipeline.scorer_stages()[0])
    assert plugins.origin(cls.__module__) == ("entry point upper = curate_ep_upper "
                                              "(curate-ep-upper 0.1)")
    result = run(pipeline, tmp_path / "out", progress=False)
    assert result.scoring is not None and result.scoring.workers >= 1
    rows = pq.read_table(result.dir / "manifest",
                         columns=["caption", "ep_upper_share"]).to_pylist()
    assert len(rows) == 32
    for r in rows:
        letters = [c for c in r["caption"] or "" if c.isalpha()]
        want = sum(c.isupper() for c in letters) / len(letters) if letters else 0.0
        assert r["ep_upper_share"] == pytest.approx(want)

    from curate.stage_info import listing

    text = " ".join(listing().split())  # wrapped lines joined
    assert ("ep_caption_upper Share of the caption's letters that are capitals. [plugin: entry "
            "point upper = curate_ep_upper (curate-ep-upper 0.1)]") in text


@pytest.mark.usefixtures("isolated_registry")
def test_a_broken_entry_point_names_its_package(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    _write_package(site, "raise RuntimeError('no licence file')\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError) as err:
        base.registered("scorer")
    assert "entry point upper = curate_ep_upper (package curate-ep-upper 0.1) failed to " \
        "import: RuntimeError: no licence file" in err.value.message
    assert "pip uninstall curate-ep-upper" in (err.value.hint or "")


@pytest.mark.usefixtures("isolated_registry")
def test_imports_errors_name_the_entry(tmp_path: Path) -> None:
    def load(imports: list[str]) -> None:
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({"imports": imports, "input": {"shards": "x.tar"},
                                        "score": ["caption_stats"]}))
        load_pipeline(path)

    with pytest.raises(ConfigError, match=r"p\.yaml: imports\[0\]: plugin 'nope\.py': no file "):
        load(["nope.py"])
    with pytest.raises(ConfigError, match=r"imports\[0\]: plugin module 'no_such_mod_x' is not "
                       "importable here") as err:
        load(["no_such_mod_x"])
    assert "give the path of its .py file" in (err.value.hint or "")
    (tmp_path / "clash.py").write_text(
        "from curate.stages.base import Scorer, register\n"
        "@register\nclass Mine(Scorer):\n    name = 'caption_stats'\n")
    with pytest.raises(ConfigError, match=r"imports\[0\]: plugin file .*clash\.py failed to "
                       r"import: TypeError: two scorers are named 'caption_stats'"):
        load(["clash.py"])
    (tmp_path / "bad.py").write_text("import nonexistent_dependency_q\n")
    with pytest.raises(ConfigError, match="ModuleNotFoundError: No module named "
                       "'nonexistent_dependency_q'"):
        load(["bad.py"])


def test_redefining_a_stage_replaces_it_but_two_names_clash() -> None:
    """A notebook cell run twice redefines its scorer (same module and name): allowed."""
    import pyarrow as pa

    namespace: dict[str, object] = {"__name__": "curate_plugin_redefine_test"}
    code = ("import pyarrow as pa\nfrom curate.stages.base import Scorer, register\n"
            "@register\nclass Again(Scorer):\n    name = 'redefined_once'\n"
            "    def outputs(self):\n        return {'x': pa.int8()}\n")
    try:
        exec(code, namespace)
        first = base.registered("scorer")["redefined_once"]
        exec(code, namespace)
        assert base.registered("scorer")["redefined_once"] is not first
        assert base.registered("scorer")["redefined_once"]().outputs() == {"x": pa.int8()}
        with pytest.raises(TypeError, match="two scorers are named 'redefined_once'"):
            exec(code.replace("class Again", "class Other"), namespace)
    finally:
        base._REGISTRY["scorer"].pop("redefined_once", None)


def test_curate_stages_lists_a_file_plugin() -> None:
    res = curate_cli("stages", "--import", str(EXAMPLE))
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())  # wrapped lines joined
    assert ("caption_digits How much of the caption is digits (an example plugin). [plugin: "
            f"file {EXAMPLE.resolve()}]") in text
    res = curate_cli("stages", "caption_digits", "--import", str(EXAMPLE))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"scorer caption_digits (plugin: file {EXAMPLE.resolve()};")
    assert "  digits  str  '0123456789'  the characters counted as digits" in res.stdout
    assert "caption_digit_share  float" in res.stdout


@pytest.mark.usefixtures("isolated_registry")
def test_the_example_pipeline_validates(small_pool: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/plugins/digits.yaml (the README's worked example), from another directory."""
    monkeypatch.chdir(tmp_path)
    res = curate_cli("validate", str(EXAMPLE.parent / "digits.yaml"), "--input",
                     str(small_pool / "*.tar"), "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    assert re.search(r"^  caption_digits +[0-9a-f]{16} +2 +0$", res.stdout, re.MULTILINE)
    assert "rule threshold        caption_mostly_digits: keep \"caption_digit_share\" <= 0.3" \
        in res.stdout
