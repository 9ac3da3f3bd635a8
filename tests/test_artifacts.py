"""On-disk formats and atomic writes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from bertpipe import artifacts


def test_atomic_dir_replaces_the_old_output_only_on_success(tmp_path):
    out = tmp_path / "out"
    with artifacts.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"

    with pytest.raises(RuntimeError), artifacts.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash mid-way")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left

    with artifacts.atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_write_json_is_stable_and_atomic(tmp_path):
    path = tmp_path / "m" / "x.json"
    artifacts.write_json(path, {"b": 1, "a": [1.5, "é"]})
    first = path.read_bytes()
    artifacts.write_json(path, {"a": [1.5, "é"], "b": 1})
    assert path.read_bytes() == first and first.endswith(b"\n")
    assert artifacts.read_json(path) == {"a": [1.5, "é"], "b": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_arrays_round_trip_memory_mapped(tmp_path):
    arrays = {"ids": np.arange(12, dtype=np.uint16).reshape(3, 4), "lens": np.array([1, 2, 3])}
    artifacts.save_arrays(tmp_path, arrays)
    loaded = artifacts.load_arrays(tmp_path, ["ids", "lens"])
    assert isinstance(loaded["ids"], np.memmap) and loaded["ids"].dtype == np.uint16
    np.testing.assert_array_equal(loaded["ids"], arrays["ids"])
    np.testing.assert_array_equal(
        artifacts.load_arrays(tmp_path, ["lens"], mmap=False)["lens"], arrays["lens"]
    )


def test_arrays_refuse_pickled_objects(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        artifacts.load_arrays(tmp_path, ["evil"], mmap=False)


def test_id_dtype_boundary():
    assert artifacts.id_dtype(65536) == np.uint16
    assert artifacts.id_dtype(65537) == np.int32


def test_checkpoint_round_trip(tmp_path):
    tensors = {"w": torch.randn(3, 5), "b": torch.arange(4)}
    meta = {"model": {"num_hiddens": 12}, "vocab_sha1": "abc"}
    artifacts.save_checkpoint(tmp_path / "m.safetensors", tensors, meta)
    loaded, loaded_meta = artifacts.load_checkpoint(tmp_path / "m.safetensors")
    assert loaded_meta == meta
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])


def test_sha1_helpers_agree(tmp_path):
    data = b"x" * 3_000_001
    (tmp_path / "f").write_bytes(data)
    assert artifacts.sha1_of_file(tmp_path / "f", chunk_size=4096) == artifacts.sha1_of_bytes(data)


def test_outputs_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with artifacts.atomic_dir(tmp_path / "out") as tmp:
            artifacts.write_json(tmp / "m.json", {})
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "m.json").stat().st_mode) == 0o644


def test_atomic_dir_removes_what_a_killed_run_left(tmp_path):
    out = tmp_path / "out"
    killed = [tmp_path / ".out.ab_d1234.tmp", tmp_path / ".out.old"]
    for folder in killed:
        folder.mkdir()
        (folder / "half.npy").write_bytes(b"half")
    (tmp_path / ".out.zz99zz99.tmp").write_bytes(b"half a file")
    others = [tmp_path / ".other.ab_d1234.tmp", tmp_path / "out.ab_d1234.tmp"]
    for path in others:
        path.write_bytes(b"not ours")
    with artifacts.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("new")
    assert sorted(tmp_path.iterdir()) == sorted([out, *others])
