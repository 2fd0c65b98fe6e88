"""A Keras SavedModel of a small dense network read without TensorFlow: LAION's autokeras NSFW
detector (LAION-AI/CLIP-based-NSFW-Detector, ``clip_autokeras_binary_nsfw``), as the zip it is
released in or its unpacked directory.

What is read, from the documented file formats:

* ``variables/variables.index``: a TensorFlow tensor bundle index, i.e. a LevelDB-style SSTable
  (blocks of prefix-compressed key/value entries with restart points, an index block, a 48-byte
  footer ending in the magic 0xdb4775248b80fb57) whose key ``""`` holds a
  ``BundleHeaderProto`` and every other key (a checkpoint name such as
  ``layer_with_weights-2/kernel/.ATTRIBUTES/VARIABLE_VALUE``) a ``BundleEntryProto``: dtype,
  shape, shard, offset and size of the tensor's little-endian bytes in
  ``variables.data-SSSSS-of-NNNNN``.
* ``keras_metadata.pb``: ``SavedMetadata``, whose root node's ``metadata`` is the model's JSON
  config: the layers in order with their classes and settings. Only a chain is accepted:
  ``InputLayer``, autokeras' ``MultiCategoryEncoding``, ``Normalization``, ``Dense``
  (activation linear, relu or sigmoid), ``ReLU``, ``Dropout`` (nothing at inference),
  ``Activation``. The k-th layer holding state is ``layer_with_weights-k`` in the checkpoint.
* ``saved_model.pb`` (only when the model has categorical columns): autokeras turned the
  columns it found categorical in the training data (``"int"`` in the encoding's config: 5 of
  the 768 for L/14, 3 of 512 for B/32) into ``StringLookup`` indices; the vocabularies are
  constants of the graph (a string tensor of keys then an int64 tensor of indices, in column
  order), read here from the ``GraphDef``'s ``Const`` nodes.

The forward pass is the model's: for an encoded column, the value is printed as TensorFlow's
``as_string`` prints a float64 (``%f``: six decimals), looked up in its vocabulary (absent: the
out-of-vocabulary index 0) and cast to float32; other columns are cast to float32 with NaN
read as 0. Then ``Normalization``: (x - mean) / max(sqrt(variance), 1e-7), and the dense layers
in float32 (torch). Protobufs are decoded from their wire format with the field numbers of
TensorFlow's ``.proto`` files (no protobuf package needed).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError

TABLE_MAGIC = 0xDB4775248B80FB57
# TensorFlow DataType enum → numpy dtype (types.proto); DT_STRING = 7 is read separately.
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 19: np.float16, 10: np.bool_}
DT_STRING, DT_INT64 = 7, 9


# -- protobuf wire format -------------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a serialised message: ints for varints and fixed
    widths, bytes for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, wire, value


def _packed(value: Any, wire: int) -> list[int]:
    """A repeated varint field: one value, or a packed run of them."""
    if wire == 0:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


# -- SSTable (variables.index) --------------------------------------------------------------

def _block_entries(data: bytes, handle: tuple[int, int]) -> Iterator[tuple[bytes, bytes]]:
    offset, size = handle
    block = data[offset:offset + size]
    if len(block) != size or len(data) < offset + size + 5:
        raise ValueError("a block runs past the end of the file")
    if data[offset + size] != 0:
        raise ValueError(f"compressed block (type {data[offset + size]}), not supported")
    (restarts,) = struct.unpack_from("<I", block, size - 4)
    end = size - 4 - 4 * restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + vlen]
        pos += vlen


def sstable(data: bytes) -> dict[str, bytes]:
    """Every key → value of an SSTable (uncompressed blocks, as tensor bundles write them)."""
    if len(data) < 48 or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise ValueError("not an SSTable (no magic number at the end)")
    footer = data[-48:-8]
    pos = 0
    _meta_off, pos = _varint(footer, pos)
    _meta_size, pos = _varint(footer, pos)
    index_off, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    out: dict[str, bytes] = {}
    for _, handle in _block_entries(data, (index_off, index_size)):
        off, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        for key, value in _block_entries(data, (off, size)):
            out[key.decode()] = value
    return out


@dataclass(frozen=True)
class BundleEntry:
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int


def _entry(value: bytes) -> BundleEntry:
    dtype = shard = offset = size = 0
    shape: list[int] = []
    for num, _, v in fields(value):
        if num == 1:
            dtype = v
        elif num == 2:  # TensorShapeProto: dim = 2 (Dim: size = 1)
            for n2, _, d in fields(v):
                if n2 == 2:
                    shape.append(next((s for n3, _, s in fields(d) if n3 == 1), 0))
        elif num == 3:
            shard = v
        elif num == 4:
            offset = v
        elif num == 5:
            size = v
        elif num == 7:
            raise ValueError("sliced tensors are not supported")
    return BundleEntry(dtype, tuple(shape), shard, offset, size)


def read_bundle(files: Callable[[str], bytes], prefix: str = "variables/variables",
                ) -> dict[str, np.ndarray]:
    """The numeric tensors of a tensor bundle (string tensors are left out). ``files(name)``
    returns the bytes of a file of the SavedModel (a directory or a zip)."""
    table = sstable(files(f"{prefix}.index"))
    header = table.pop("", b"")
    num_shards = next((v for n, _, v in fields(header) if n == 1), 1)
    shards: dict[int, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for key, value in table.items():
        e = _entry(value)
        if e.dtype not in DTYPES:
            continue
        if e.shard not in shards:
            shards[e.shard] = files(f"{prefix}.data-{e.shard:05d}-of-{num_shards:05d}")
        dt = np.dtype(DTYPES[e.dtype]).newbyteorder("<")
        count = int(np.prod(e.shape)) if e.shape else 1
        if e.size != count * dt.itemsize or e.offset + e.size > len(shards[e.shard]):
            raise ValueError(f"{key}: {e.size} bytes for shape {e.shape} of {dt}")
        raw = shards[e.shard][e.offset:e.offset + e.size]
        out[key] = np.frombuffer(raw, dtype=dt).reshape(e.shape).astype(DTYPES[e.dtype])
    return out


# -- keras_metadata.pb and saved_model.pb ---------------------------------------------------

def keras_config(meta: bytes) -> dict[str, Any]:
    """The root model's JSON config in ``keras_metadata.pb`` (SavedMetadata: nodes = 1;
    SavedObject: node_path = 3, identifier = 4, metadata = 5)."""
    for num, _, node in fields(meta):
        if num != 1:
            continue
        f = {n: v for n, _, v in fields(node)}
        if f.get(3, b"") == b"root":
            return dict(json.loads(f.get(5, b"{}")))
    raise ValueError("keras_metadata.pb has no root model")


def graph_vocabularies(saved_model: bytes) -> list[dict[str, int]]:
    """The string → int64 tables held as ``Const`` pairs (keys, then values of the same length)
    in the main graph of ``saved_model.pb``, in node order (SavedModel: meta_graphs = 2;
    MetaGraphDef: graph_def = 2; GraphDef: node = 1; NodeDef: op = 2, attr = 5; AttrValue:
    tensor = 8; TensorProto: dtype = 1, tensor_content = 4, string_val = 8, int64_val = 10)."""
    consts: list[tuple[int, Any]] = []
    for num, _, mg in fields(saved_model):
        if num != 2:
            continue
        for n2, _, graph in fields(mg):
            if n2 != 2:
                continue
            for n3, _, node in fields(graph):
                if n3 != 1:
                    continue
                op, tensor = b"", None
                for n4, _, v in fields(node):
                    if n4 == 2:
                        op = v
                    elif n4 == 5:
                        entry = {n: x for n, _, x in fields(v)}
                        if entry.get(1) == b"value":
                            tensor = next((x for n, _, x in fields(entry.get(2, b"")) if n == 8),
                                          None)
                if op == b"Const" and tensor is not None:
                    consts.append(_const(tensor))
        break  # the first MetaGraphDef (serve)
    tables = []
    for (dt_a, keys), (dt_b, values) in pairwise(consts):
        if dt_a == DT_STRING and dt_b == DT_INT64 and len(keys) == len(values) > 0:
            tables.append(dict(zip(keys, values, strict=True)))
    return tables


def _const(tensor: bytes) -> tuple[int, Any]:
    dtype, strings, ints, content = 0, [], [], b""
    for num, wire, v in fields(tensor):
        if num == 1:
            dtype = v
        elif num == 8:
            strings.append(v.decode("utf-8", "replace"))
        elif num == 10:
            ints.extend(_packed(v, wire))
        elif num == 4:
            content = v
    if dtype == DT_INT64 and content and not ints:
        ints = np.frombuffer(content, "<i8").tolist()
    ints = [i - (1 << 64) if i >= 1 << 63 else i for i in ints]
    return dtype, strings if dtype == DT_STRING else ints


# -- the model ------------------------------------------------------------------------------

@dataclass
class KerasHead:
    """The network after the categorical encoding (``module``, torch) and the encoding itself
    (``encode``: float32 embeddings [N, D] → the module's input)."""

    module: Any
    dim: int
    categorical: dict[int, dict[str, int]] = field(default_factory=dict)  # column → vocabulary

    def encode(self, x: np.ndarray) -> np.ndarray:
        out = np.nan_to_num(x.astype(np.float32), nan=0.0, posinf=np.inf, neginf=-np.inf)
        for col, vocab in self.categorical.items():
            out[:, col] = [vocab.get(f"{float(v):f}", 0) for v in x[:, col]]
        return out


def _opener(path: Path) -> tuple[Callable[[str], bytes], Callable[[], list[str]]]:
    """Read files of a SavedModel directory, or of a zip holding one (at any depth)."""
    if path.is_dir():
        def read_dir(name: str) -> bytes:
            return (path / name).read_bytes()

        return read_dir, lambda: sorted(str(p.relative_to(path)) for p in path.rglob("*")
                                        if p.is_file())
    data = path.read_bytes()
    z = zipfile.ZipFile(io.BytesIO(data))
    names = [n for n in z.namelist() if not n.endswith("/")]
    roots = [n[: -len("keras_metadata.pb")] for n in names if n.endswith("keras_metadata.pb")
             and not n.startswith("__MACOSX")]
    if len(roots) != 1:
        raise ValueError(f"the zip holds {len(roots)} Keras models (keras_metadata.pb files)")
    root = roots[0]
    return (lambda name: z.read(root + name)), lambda: sorted(
        n[len(root):] for n in names if n.startswith(root))


def savedmodel_digest(path: str | Path) -> str:
    """SHA-256 over the files of a SavedModel directory (names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def load_keras_head(path: str | Path) -> KerasHead:
    """The released Keras model at ``path`` (a SavedModel directory or a zip of one)."""
    path = Path(path)
    try:
        return _load(path)
    except CurateError:
        raise
    except (OSError, KeyError, ValueError, json.JSONDecodeError, zipfile.BadZipFile) as exc:
        raise CurateError(f"{path}: not a Keras SavedModel this reader can load "
                          f"({type(exc).__name__}: {exc})",
                          "give LAION's clip_autokeras_binary_nsfw(.zip) or NeMo Curator's "
                          ".pth") from None


def _load(path: Path) -> KerasHead:
    import torch

    from curate.lib.clip_heads import standardize

    read, _ = _opener(path)
    config = keras_config(read("keras_metadata.pb"))
    layers = config.get("config", {}).get("layers", [])
    if config.get("class_name") not in ("Functional", "Sequential") or not layers:
        raise ValueError(f"a {config.get('class_name')!r} model, not a chain of layers")
    variables = read_bundle(read)
    _check_chain(layers)
    mods: list[Any] = []
    categorical: dict[int, dict[str, int]] = {}
    dim: int | None = None
    k = 0  # index of the next layer holding state: layer_with_weights-k

    def var(name: str) -> Any:
        key = f"layer_with_weights-{k}/{name}/.ATTRIBUTES/VARIABLE_VALUE"
        if key not in variables:
            raise ValueError(f"no variable {key}")
        return torch.from_numpy(np.array(variables[key], dtype=np.float32))

    for layer in layers:
        cls, cfg = layer["class_name"], layer.get("config", {})
        if cls == "InputLayer":
            shape = cfg.get("batch_input_shape")
            items = shape.get("items") if isinstance(shape, dict) else shape
            dim = int(items[-1]) if items and items[-1] is not None else None
        elif cls.endswith("MultiCategoryEncoding"):
            enc = list(cfg.get("encoding", []))
            if dim is not None and len(enc) != dim:
                raise ValueError(f"{len(enc)} column encodings for {dim} inputs")
            dim = len(enc)
            cols = [i for i, e in enumerate(enc) if e == "int"]
            other = {e for e in enc if e not in ("none", "int")}
            if other:
                raise ValueError(f"column encodings {sorted(other)} are not supported")
            if cols:
                vocabs = graph_vocabularies(read("saved_model.pb"))
                if len(vocabs) != len(cols):
                    raise ValueError(f"{len(cols)} categorical columns but {len(vocabs)} "
                                     "vocabularies in saved_model.pb")
                categorical = dict(zip(cols, vocabs, strict=True))
                k += 1
        elif cls == "Normalization":
            mods.append(standardize(var("mean"), var("variance")))
            k += 1
        elif cls == "Dense":
            kernel, bias = var("kernel"), (var("bias") if cfg.get("use_bias", True) else None)
            lin = torch.nn.Linear(kernel.shape[0], kernel.shape[1], bias=bias is not None)
            with torch.no_grad():
                lin.weight.copy_(kernel.T)
                if bias is not None:
                    lin.bias.copy_(bias)
            mods.append(lin)
            mods.extend(_activation(cfg.get("activation", "linear")))
            k += 1
        elif cls == "ReLU":
            if cfg.get("max_value") is not None or cfg.get("negative_slope", 0) or cfg.get(
                    "threshold", 0):
                raise ValueError("a ReLU with max_value, negative_slope or threshold")
            mods.append(torch.nn.ReLU())
        elif cls == "Activation":
            mods.extend(_activation(cfg.get("activation", "linear")))
        elif cls == "Dropout":
            continue  # identity at inference
        else:
            raise ValueError(f"layer {cls!r} is not supported")
    module = torch.nn.Sequential(*mods).eval()
    first = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
    width = int(first.in_features) if first is not None else None
    if dim is None:
        dim = width
    if dim is None or (width is not None and mods and isinstance(mods[0], torch.nn.Linear)
                       and width != dim):
        raise ValueError(f"the input width {dim} does not match the first layer's {width}")
    return KerasHead(module=module, dim=dim, categorical=categorical)


def _activation(name: str) -> list[Any]:
    import torch

    acts = {"linear": [], "relu": [torch.nn.ReLU()], "sigmoid": [torch.nn.Sigmoid()]}
    if name not in acts:
        raise ValueError(f"activation {name!r} is not supported")
    return list(acts[name])


def _check_chain(layers: list[dict[str, Any]]) -> None:
    """Each layer's only input is the layer before it (a Sequential has no inbound nodes)."""
    for prev, layer in pairwise(layers):
        nodes = layer.get("inbound_nodes")
        if nodes is None:
            continue
        inputs = [n[0] for node in nodes for n in node] if nodes else []
        if inputs != [prev.get("name", prev.get("config", {}).get("name"))]:
            raise ValueError(f"layer {layer.get('name')!r} does not take the layer before it "
                             "as its only input: only chains are supported")
