"""nsfw: LAION's CLIP-based NSFW detector (punsafe) over stored (float16) CLIP embeddings, from
NeMo Curator's torch format and from the released Keras SavedModel format read without
TensorFlow: a tiny model that TensorFlow itself wrote (tests/data/keras_tiny, with its
``predict``), and autokeras-shaped models written here byte by byte (tensor bundle SSTable,
keras_metadata.pb, the vocabularies of categorical columns in saved_model.pb)."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from shardmaker import jpeg, write_tar
from torch import nn

from curate.errors import CurateError
from curate.lib import tf_bundle
from curate.stages.clip import Clip, ClipParams
from curate.stages.nsfw import Nsfw, NsfwParams

DATA = Path(__file__).parent / "data" / "keras_tiny"


# -- NeMo Curator's torch port, as it defines it ------------------------------------------

class Normalization(nn.Module):
    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("variance", torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.variance.sqrt()


class NSFWModel(nn.Module):
    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.norm = Normalization([dim])
        self.linear_1 = nn.Linear(dim, 64)
        self.linear_2 = nn.Linear(64, 512)
        self.linear_3 = nn.Linear(512, 256)
        self.linear_4 = nn.Linear(256, 1)
        self.act = nn.ReLU()
        self.act_out = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x = self.act(self.linear_1(x))
        x = self.act(self.linear_2(x))
        x = self.act(self.linear_3(x))
        return self.act_out(self.linear_4(x))


def nemo_weights(path: Path, dim: int = 768, seed: int = 0) -> NSFWModel:
    torch.manual_seed(seed)
    m = NSFWModel(dim).eval()
    with torch.no_grad():
        m.norm.mean.copy_(torch.randn(dim) * 0.02)
        m.norm.variance.copy_(torch.rand(dim) * 1e-3 + 1e-4)
        m.linear_4.bias.fill_(-2.0)
    torch.save(m.state_dict(), path)
    return m


def embeddings(n: int, dim: int = 768, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def run(scorer: Nsfw, emb: np.ndarray, column: str = "clip_image_emb_l14") -> np.ndarray:
    scorer.setup()
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float16()), emb.shape[1])
    return scorer.score_batch(pa.table({column: col}))[scorer.column].to_numpy(
        zero_copy_only=False)


def test_nemo_port_equals_its_module_on_stored_float16(tmp_path: Path) -> None:
    ref = nemo_weights(tmp_path / "clip_autokeras_binary_nsfw.pth")
    emb = embeddings(200)
    s = Nsfw(NsfwParams(weights=str(tmp_path / "clip_autokeras_binary_nsfw.pth")))
    got = run(s, emb)
    with torch.no_grad():  # LAION-5B fed the stored (normalised, float16) embedding as is
        want = ref(torch.from_numpy(emb.astype(np.float32))).numpy()[:, 0]
    assert s.column == "punsafe" and got.dtype == np.float32
    assert 0.01 < want.mean() < 0.99  # not saturated: the comparison means something
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    # normalise: true renormalises first (for a column that is not unit length)
    twice = run(Nsfw(NsfwParams(weights=str(tmp_path / "clip_autokeras_binary_nsfw.pth"),
                                normalise=True)), (emb.astype(np.float32) * 3).astype(np.float16))
    with torch.no_grad():
        x = torch.from_numpy((emb.astype(np.float32) * 3).astype(np.float16).astype(np.float32))
        want = ref(x / x.norm(dim=-1, keepdim=True)).numpy()[:, 0]
    np.testing.assert_allclose(twice, want, rtol=0, atol=1e-6)


def test_a_model_tensorflow_wrote_equals_its_predict(tmp_path: Path) -> None:
    """tests/data/keras_tiny: Normalization, Dense, ReLU, Dense(relu), Dropout, Dense,
    Activation(sigmoid), saved by TensorFlow; our forward pass equals Keras' predict."""
    head = tf_bundle.load_keras_head(DATA / "model")
    probe, want = np.load(DATA / "probe.npy"), np.load(DATA / "predict.npy")
    from curate.lib.clip_heads import forward

    np.testing.assert_allclose(forward(head.module, head.encode(probe)), want, rtol=0,
                               atol=1e-6)
    assert head.dim == 8 and head.categorical == {}
    # the same through the scorer, from the directory and from a zip of it
    zipped = tmp_path / "tiny.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for f in sorted((DATA / "model").rglob("*")):
            if f.is_file():
                z.write(f, "tiny_model/" + str(f.relative_to(DATA / "model")))
    for weights in (DATA / "model", zipped):
        s = Nsfw(NsfwParams(weights=str(weights), column="e", any_model=True))
        np.testing.assert_allclose(run(s, probe.astype(np.float16), "e"), forward(
            head.module, probe.astype(np.float16).astype(np.float32)), rtol=0, atol=1e-7)
    assert Nsfw(NsfwParams(weights=str(DATA / "model"))).fingerprint() == Nsfw(
        NsfwParams(weights=str(DATA / "model"))).fingerprint()
    assert Nsfw(NsfwParams(weights=str(DATA / "model"))).fingerprint() != Nsfw(
        NsfwParams(weights=str(zipped))).fingerprint()


# -- the released format, written here ----------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """An SSTable block: every entry a restart point (nothing shared), then the restarts."""
    body, restarts = b"", []
    for key, value in entries:
        restarts.append(len(body))
        body += _varint(0) + _varint(len(key)) + _varint(len(value)) + key + value
    return body + b"".join(struct.pack("<I", r) for r in restarts) + struct.pack(
        "<I", len(restarts))


def write_bundle(prefix: Path, tensors: dict[str, np.ndarray]) -> None:
    """A one-shard tensor bundle (variables.index + variables.data-00000-of-00001)."""
    dtypes = {np.dtype(np.float32): 1, np.dtype(np.int64): 9}
    data, entries = b"", [(b"", _field(1, 1))]  # BundleHeaderProto: num_shards = 1
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        raw = t.astype(t.dtype.newbyteorder("<")).tobytes()
        shape = b"".join(_field(2, _field(1, d)) for d in t.shape)
        entry = _field(1, dtypes[t.dtype]) + _field(2, shape) + _field(4, len(data)) + \
            _field(5, len(raw))
        entries.append((name.encode(), entry))
        data += raw
    out = b""

    def put(block: bytes) -> tuple[int, int]:
        nonlocal out
        handle = (len(out), len(block))
        out += block + b"\0" + b"\0\0\0\0"  # no compression; the CRC is not checked
        return handle

    blocks = put(_block(sorted(entries)))
    meta = put(_block([]))
    index = put(_block([(b"\xff", _varint(blocks[0]) + _varint(blocks[1]))]))
    footer = _varint(meta[0]) + _varint(meta[1]) + _varint(index[0]) + _varint(index[1])
    out += footer.ljust(40, b"\0") + struct.pack("<Q", tf_bundle.TABLE_MAGIC)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.index").write_bytes(out)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)


def _const(tensor: bytes) -> bytes:
    attr = _field(1, b"value") + _field(2, _field(8, tensor))
    return _field(2, b"Const") + _field(5, attr)


def write_autokeras(root: Path, dim: int, widths: list[int], vocabs: dict[int, list[str]],
                    seed: int = 0) -> dict[str, Any]:
    """An autokeras-shaped SavedModel as LAION released: InputLayer (float64),
    MultiCategoryEncoding ("int" for the columns in ``vocabs``), Normalization, Dense/ReLU
    ..., Dense, Activation(sigmoid). Returns the arrays, for the reference."""
    rng = np.random.default_rng(seed)
    layers: list[dict[str, Any]] = [{"class_name": "InputLayer", "name": "input_1", "config": {
        "batch_input_shape": {"class_name": "__tuple__", "items": [None, dim]},
        "dtype": "float64", "name": "input_1"}, "inbound_nodes": []}]

    def add(cls: str, name: str, **cfg: Any) -> None:
        layers.append({"class_name": cls, "name": name, "config": {"name": name, **cfg},
                       "inbound_nodes": [[[layers[-1]["name"], 0, 0, {}]]]})

    enc = ["int" if c in vocabs else "none" for c in range(dim)]
    add("Custom>MultiCategoryEncoding", "multi_category_encoding", encoding=enc)
    add("Normalization", "normalization", axis=[-1])
    tensors: dict[str, np.ndarray] = {}
    k = 1 if vocabs else 0
    if vocabs:  # the tables' own (empty) checkpoint entries, as released
        tensors["layer_with_weights-0/encoding_layers/0/token_counts/.ATTRIBUTES/table-values"] \
            = np.zeros(0, np.int64)
    mean = rng.normal(size=dim).astype(np.float32) * 0.02
    var = (rng.random(dim) * 1e-3 + 1e-4).astype(np.float32)
    for c, v in vocabs.items():  # encoded columns hold indices: their statistics are large
        mean[c], var[c] = len(v) / 2, (len(v) / 3) ** 2
    tensors[f"layer_with_weights-{k}/mean/.ATTRIBUTES/VARIABLE_VALUE"] = mean
    tensors[f"layer_with_weights-{k}/variance/.ATTRIBUTES/VARIABLE_VALUE"] = var
    tensors[f"layer_with_weights-{k}/count/.ATTRIBUTES/VARIABLE_VALUE"] = np.array(7, np.int64)
    dense = []
    width = dim
    for i, w in enumerate([*widths, 1]):
        add("Dense", f"dense_{i}", units=w, activation="linear", use_bias=True)
        if w != 1:
            add("ReLU", f"re_lu_{i}")
            add("Dropout", f"dropout_{i}", rate=0.5)
        kernel = (rng.normal(size=(width, w)) / np.sqrt(width)).astype(np.float32)
        bias = rng.normal(size=w).astype(np.float32) * 0.1
        k += 1
        tensors[f"layer_with_weights-{k}/kernel/.ATTRIBUTES/VARIABLE_VALUE"] = kernel
        tensors[f"layer_with_weights-{k}/bias/.ATTRIBUTES/VARIABLE_VALUE"] = bias
        dense.append((kernel, bias))
        width = w
    add("Activation", "classification_head_1", activation="sigmoid")
    write_bundle(root / "variables" / "variables", tensors)
    config = {"class_name": "Functional", "config": {"name": "model", "layers": layers}}
    node = _field(2, 0) + _field(3, b"root") + _field(4, b"_tf_keras_network") + _field(
        5, json.dumps(config).encode())
    (root / "keras_metadata.pb").write_bytes(_field(1, node) + _field(1, _field(3, b"root.x")))
    nodes = [_const(_field(1, 1) + _field(4, np.zeros(4, np.float32).tobytes()))]  # a decoy
    for c in sorted(vocabs):
        keys = b"".join(_field(8, s.encode()) for s in vocabs[c])
        packed = b"".join(_varint(i) for i in range(1, len(vocabs[c]) + 1))
        nodes += [_const(_field(1, 7) + keys), _const(_field(1, 9) + _field(10, packed))]
    graph = b"".join(_field(1, n) for n in nodes)
    (root / "saved_model.pb").write_bytes(_field(1, 1) + _field(2, _field(2, graph)))
    return {"mean": mean, "var": var, "dense": dense, "vocabs": vocabs}


def keras_reference(x: np.ndarray, m: dict[str, Any]) -> np.ndarray:
    """The released model's computation, in numpy: encoded columns looked up as TensorFlow
    prints a float64 (printf's %f), absent → 0; Normalization; Dense/ReLU...; sigmoid."""
    h = x.astype(np.float64).astype(np.float32)
    for c, vocab in m["vocabs"].items():
        index = {s: i + 1 for i, s in enumerate(vocab)}
        h[:, c] = [index.get(f"{float(v):f}", 0) for v in x[:, c].astype(np.float64)]
    h = (h - m["mean"]) / np.maximum(np.sqrt(m["var"]), 1e-7)
    for i, (kernel, bias) in enumerate(m["dense"]):
        h = h @ kernel + bias
        if i < len(m["dense"]) - 1:
            h = np.maximum(h, 0)
    return (1 / (1 + np.exp(-h[:, 0].astype(np.float64)))).astype(np.float32)


def float16_vocab(lo: float, hi: float, every: int = 1) -> list[str]:
    """'%f' strings of the float16 values in [lo, hi]: the kind of vocabulary autokeras built
    from LAION's float16 training embeddings."""
    pos = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16)  # every finite value >= 0
    allv = np.concatenate([-pos[::-1], pos]).astype(np.float64)
    vals = allv[(allv >= lo) & (allv <= hi)][::every]
    return list(dict.fromkeys(f"{v:f}" for v in vals))


def test_the_released_autokeras_format_with_categorical_columns(tmp_path: Path) -> None:
    vocabs = {3: float16_vocab(-0.08, 0.08, 2), 17: float16_vocab(0.0, 0.1)}
    m = write_autokeras(tmp_path / "clip_autokeras_binary_nsfw", 64, [16, 8], vocabs)
    emb = embeddings(300, 64, seed=3)
    head = tf_bundle.load_keras_head(tmp_path / "clip_autokeras_binary_nsfw")
    assert set(head.categorical) == {3, 17} and head.dim == 64
    s = Nsfw(NsfwParams(weights=str(tmp_path / "clip_autokeras_binary_nsfw"), column="e"))
    got = run(s, emb, "e")
    want = keras_reference(emb.astype(np.float32), m)
    hits = sum(f"{float(v):f}" in vocabs[c] for c in vocabs for v in emb[:, c])
    assert 50 < hits < 600  # both found and missing values are exercised
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert 0.05 < float(np.std(want))  # the columns matter: reading them as numbers differs
    from curate.lib.clip_heads import forward

    plain = forward(head.module, emb.astype(np.float32))
    assert np.abs(plain - want).max() > 0.01
    # zipped, as released
    with zipfile.ZipFile(tmp_path / "nsfw.zip", "w") as z:
        for f in sorted((tmp_path / "clip_autokeras_binary_nsfw").rglob("*")):
            z.write(f, "clip_autokeras_binary_nsfw/" + str(
                f.relative_to(tmp_path / "clip_autokeras_binary_nsfw")))
    got_zip = run(Nsfw(NsfwParams(weights=str(tmp_path / "nsfw.zip"), column="e")), emb, "e")
    np.testing.assert_array_equal(got_zip, got)


def test_unsupported_or_broken_models_are_clear_errors(tmp_path: Path) -> None:
    write_autokeras(tmp_path / "m", 16, [4], {})
    meta = (tmp_path / "m" / "keras_metadata.pb").read_bytes()
    (tmp_path / "m" / "keras_metadata.pb").write_bytes(meta.replace(b'"ReLU"', b'"ELU"'))
    with pytest.raises(CurateError, match="layer 'ELU' is not supported"):
        Nsfw(NsfwParams(weights=str(tmp_path / "m"))).check()
    write_autokeras(tmp_path / "v", 16, [4], {2: ["0.1", "0.2"]})
    (tmp_path / "v" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(CurateError, match="1 categorical columns but 0 vocabularies"):
        tf_bundle.load_keras_head(tmp_path / "v")
    idx = tmp_path / "v" / "variables" / "variables.index"
    idx.write_bytes(idx.read_bytes()[:-3])
    with pytest.raises(CurateError, match="not an SSTable"):
        tf_bundle.load_keras_head(tmp_path / "v")
    (tmp_path / "z.zip").write_bytes(b"PK not really")
    with pytest.raises(CurateError, match="not a Keras SavedModel"):
        Nsfw(NsfwParams(weights=str(tmp_path / "z.zip"))).check()
    torch.save({"norm.mean": torch.zeros(3)}, tmp_path / "partial.pth")
    with pytest.raises(CurateError, match=r"not a NSFW detector \(NeMo Curator's NSFWModel"):
        Nsfw(NsfwParams(weights=str(tmp_path / "partial.pth"))).check()


def test_missing_weights_and_the_clip_model_check(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(CurateError, match="clip_retrieval/ViT-L_14/clip_autokeras_binary_nsfw"
                       ) as e:
        Nsfw().check()
    assert "clip_autokeras_binary_nsfw.zip" in str(e.value.hint) and "unzip" in str(e.value.hint)
    # where clip-retrieval caches the release, it is found by default
    write_autokeras(tmp_path / "home" / ".cache" / "clip_retrieval" / "ViT-L_14" /
                    "clip_autokeras_binary_nsfw", 768, [8], {})
    s = Nsfw()
    s.check()
    l14 = Clip(ClipParams(model="ViT-L-14", pretrained="openai", name="l14"))
    s.check_producers({"clip_image_emb_l14": l14})
    b32 = Clip(ClipParams(model="ViT-B-32", pretrained="openai", name="l14", embed_dim=512))
    with pytest.raises(CurateError, match="trained on ViT-L-14/openai"):
        s.check_producers({"clip_image_emb_l14": b32})
    with pytest.raises(CurateError, match="has 512 dimensions"):
        Nsfw(NsfwParams(any_model=True)).check_producers({"clip_image_emb_l14": b32})
    out = Nsfw(NsfwParams(any_model=True, column="e"))
    out.setup()
    with pytest.raises(ValueError, match="e has 512 dimensions, the NSFW head takes 768"):
        run(out, embeddings(2, 512), "e")


def test_a_pipeline_reads_the_stored_embeddings(tmp_path: Path) -> None:
    """CLIP (tiny, real) scores once; the detector added later reads its stored float16
    embeddings (CLIP not run), through the released format with categorical columns."""
    from curate.config import pipeline_from_dict
    from curate.runner import score, select

    for n in range(2):
        members = []
        for i in range(6):
            members += [(f"{n}{i:03d}.jpg", jpeg(64, 48, (30 * i, 90 + 50 * n, 200 - 20 * i))),
                        (f"{n}{i:03d}.txt", f"picture {i} in shard {n}".encode())]
        write_tar(tmp_path / "pool" / f"{n:05d}.tar", members)
    vocabs = {c: float16_vocab(-0.2, 0.2) for c in (5, 77, 200)}
    m = write_autokeras(tmp_path / "nsfw", 256, [32, 16], vocabs)
    clip = {"clip": {"model": "curate-tiny", "pretrained": None, "name": "l14", "cpus": 1,
                     "gpus": 0}}
    head = {"nsfw": {"weights": str(tmp_path / "nsfw"), "any_model": True}}

    def pipeline(scorers: list[Any]) -> Any:
        return pipeline_from_dict({"name": "p", "input": {"shards": str(tmp_path / "pool" /
                                                                        "*.tar")},
                                   "score": scorers, "select": [],
                                   "output": {"write_shards": False}})

    store = tmp_path / "store"
    score(pipeline([clip]), store, local=True, progress=False)
    again = score(pipeline([clip, head]), store, local=True, progress=False)
    assert again.scorers["clip_l14"].samples == 0 and again.scorers["nsfw"].computed == 2
    rows = pq.read_table(select(store, pipeline([clip, head]), tmp_path / "sel",
                                progress=False).dir / "manifest").to_pylist()
    assert len(rows) == 12
    for r in rows:
        [npy] = (store / "scores" / "clip_l14").glob(
            f"*/clip_image_emb_l14/{r['shard'][:-4]}.*.npy")
        x = np.load(npy)[r["index"]][None]
        assert r["punsafe"] == pytest.approx(float(keras_reference(x.astype(np.float32), m)[0]),
                                             abs=1e-6)


@pytest.mark.gpu
def test_on_a_gpu_the_scores_are_the_cpu_scores(tmp_path: Path) -> None:
    vocabs = {3: float16_vocab(-0.08, 0.08)}
    write_autokeras(tmp_path / "m", 768, [64, 512, 256], vocabs)
    emb = embeddings(500)
    cpu = run(Nsfw(NsfwParams(weights=str(tmp_path / "m"))), emb)
    gpu = Nsfw(NsfwParams(weights=str(tmp_path / "m"), gpus=1))
    gpu.device = "cuda"
    np.testing.assert_allclose(run(gpu, emb), cpu, rtol=0, atol=1e-3)
