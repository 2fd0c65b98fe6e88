"""Weights specs: local paths and hub names resolved offline from the Hugging Face cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hubcache import put_in_hub_cache

from curate.errors import CurateError
from curate.lib.weights import parse_hub_spec, resolve_weights, weights_digest


def test_parse_hub_spec() -> None:
    assert parse_hub_spec("hf-hub:org/repo/a/b.pth@v1") == ("org/repo", "a/b.pth", "v1")
    assert parse_hub_spec("hf-hub:org/repo/w.pth") == ("org/repo", "w.pth", None)
    with pytest.raises(CurateError, match="hf-hub:ORG/REPO/FILE"):
        parse_hub_spec("hf-hub:org/repo")


def test_local_path(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert resolve_weights(str(f)) == f.resolve()
    assert weights_digest(f) == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    with pytest.raises(CurateError, match="no weights file"):
        resolve_weights(str(tmp_path / "missing.bin"))


def test_hub_name_resolves_offline_from_the_cache(tmp_path: Path) -> None:
    """In a fresh process with HF_HUB_OFFLINE=1: the cached file is found; a file that is not
    cached is a clear error naming how to get it."""
    put_in_hub_cache(tmp_path / "hub", "someorg/heads", "sub/w.pth", b"weights!")
    code = (
        "from curate.lib.weights import resolve_weights\n"
        "from curate.errors import CurateError\n"
        "print(open(resolve_weights('hf-hub:someorg/heads/sub/w.pth'), 'rb').read().decode())\n"
        "try:\n"
        "    resolve_weights('hf-hub:someorg/heads/other.pth')\n"
        "except CurateError as e:\n"
        "    print('ERR', e)\n")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.splitlines()[0] == "weights!"
    assert "ERR weights 'hf-hub:someorg/heads/other.pth'" in out
    assert "hf download someorg/heads other.pth" in out
