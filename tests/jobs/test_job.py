"""Sharded jobs: shard tasks, resume, refusing other jobs' shards, global pruning across
shards, bounded memory, and the same bytes whatever runs the shards."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from xorsparse.checkpoint.options import RunOptions
from xorsparse.checkpoint.readers import open_checkpoint
from xorsparse.checkpoint.verify import reference_state, verify_checkpoint
from xorsparse.format.container import RawTensor, XspFile, XspWriter, write_xsp
from xorsparse.jobs.executors import LocalExecutor
from xorsparse.jobs.folder import compress_folder, decompress_folder
from xorsparse.jobs.tasks import JobError
from xorsparse.tensor import CompressConfig, compress_tensor
from xorsparse.tensor.pipeline import to_float32
from xorsparse.tensor.prune import global_magnitude_masks

CFG = CompressConfig(sparsity=0.8, bits=2)


def make_folder(d, shards: int = 4, per: int = 2, rows: int = 24, cols: int = 40, seed: int = 0) -> str:
    from safetensors.torch import save_file

    d.mkdir()
    g = torch.Generator().manual_seed(seed)
    weight_map = {}
    for i in range(shards):
        sd = {f"layers.{i}.proj{j}.weight": torch.randn(rows, cols, generator=g).to(torch.bfloat16)
              for j in range(per)}
        sd[f"layers.{i}.proj0.weight"][0, :5] = 0.5  # ties across tensors and shards
        sd[f"layers.{i}.norm.weight"] = torch.ones(cols)
        f = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(sd, str(d / f))
        weight_map.update({n: f for n in sd})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "tokenizer.json").write_text("{}")
    return str(d)


def read_all(folder: str) -> dict[str, bytes]:
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, f))}


@pytest.fixture
def src(tmp_path):
    return make_folder(tmp_path / "model")


def test_writer_gives_write_xsp_bytes(tmp_path):
    rng = np.random.default_rng(0)
    cts = {f"w{i}": compress_tensor(rng.standard_normal((16, 70)).astype(np.float32), CFG) for i in range(3)}
    raw = {"bias": RawTensor.from_array(rng.standard_normal(5).astype(np.float32)),
           "step": RawTensor.from_array(np.arange(3, dtype=np.int64))}
    info = {"order": ["w0", "bias", "w1", "step", "w2"]}
    write_xsp(tmp_path / "a.xsp", cts, raw, CFG, info)
    w = XspWriter(tmp_path / "b.xsp")
    w.add_compressed("w0", cts["w0"])
    w.add_raw("bias", raw["bias"])
    w.add_compressed("w1", cts["w1"])
    w.add_raw("step", raw["step"])
    w.add_compressed("w2", cts["w2"])
    w.finish(CFG, info)
    assert (tmp_path / "a.xsp").read_bytes() == (tmp_path / "b.xsp").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.xsp", "b.xsp"]  # the spool has no name


def test_folder_job_writes_one_shard_per_input_and_the_index(tmp_path, src):
    out = str(tmp_path / "out")
    rep = compress_folder(src, out, CFG)
    files = sorted(os.listdir(out))
    assert files == ["config.json", "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                     "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                     "model.safetensors.index.json", "tokenizer.json"]
    assert [o.reused for o in rep.outcomes] == [False] * 4
    with XspFile(os.path.join(out, "model-00002-of-00004.safetensors")) as f:
        job = f.meta["info"]["job"]
        assert len(job["key"]) == 64 and len(job["input_sha256"]) == 64
        assert f.meta["info"]["shard"] == [2, 4]
    assert all(r["exact"] for r in verify_checkpoint(out, src))


def test_same_bytes_with_one_or_two_workers(tmp_path, src):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    compress_folder(src, a, CFG, run=RunOptions(executor=LocalExecutor(1)))
    with LocalExecutor(2) as ex:
        rep = compress_folder(src, b, CFG, run=RunOptions(executor=ex))
    assert len({o.pid for o in rep.outcomes}) >= 1
    assert read_all(a) == read_all(b)


def test_same_bytes_on_ray(tmp_path, src):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'xorsparse[ray]'): Ray executor untested")
    from xorsparse.jobs.executors import RayExecutor

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    compress_folder(src, a, CFG)
    events = []
    with RayExecutor(None, 2) as ex:
        compress_folder(src, b, CFG, run=RunOptions(executor=ex, on_event=events.append))
        assert all(r["exact"] for r in verify_checkpoint(b, src, executor=ex))
    assert read_all(a) == read_all(b)
    assert sum(e["kind"] == "tensor" for e in events) == 12  # progress came back from the tasks


def test_rerun_resumes_keeping_finished_shards(tmp_path, src):
    out = tmp_path / "out"
    compress_folder(src, str(out), CFG)
    want = read_all(str(out))
    os.unlink(out / "model-00003-of-00004.safetensors")  # as if killed before it was written
    os.unlink(out / "model.safetensors.index.json")
    # a killed write: format/output.py's temporary name, of a process that no longer runs
    from xorsparse.format.output import _host

    (out / f".tmp-xs-{_host()}-{(1 << 22) + 7}-x1y2z3w4-model-00003-of-00004.safetensors").write_bytes(b"half")
    inodes = {f: os.stat(out / f).st_ino for f in os.listdir(out) if f.startswith("model-")}
    rep = compress_folder(src, str(out), CFG)
    assert [o.reused for o in rep.outcomes] == [True, True, False, True]
    assert any("resumed: kept 3 of 4" in n for n in rep.notes)
    assert read_all(str(out)) == want
    assert all(os.stat(out / f).st_ino == ino for f, ino in inodes.items())  # untouched
    # the report still covers every tensor
    assert len(rep.rows) == 8


def test_corrupt_shard_of_the_same_job_is_redone(tmp_path, src):
    out = tmp_path / "out"
    compress_folder(src, str(out), CFG)
    want = read_all(str(out))
    p = out / "model-00002-of-00004.safetensors"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))
    rep = compress_folder(src, str(out), CFG)
    assert [o.reused for o in rep.outcomes] == [True, False, True, True]
    assert "checksum" in rep.outcomes[1].redone
    assert read_all(str(out)) == want


def test_other_settings_are_refused_unless_forced(tmp_path, src):
    out = tmp_path / "out"
    compress_folder(src, str(out), CFG)
    other = CompressConfig(sparsity=0.5, bits=2)
    with pytest.raises(JobError, match="another job.*--force"):
        compress_folder(src, str(out), other)
    rep = compress_folder(src, str(out), other, run=RunOptions(force=True))
    assert not any(o.reused for o in rep.outcomes)
    fresh = tmp_path / "fresh"
    compress_folder(src, str(fresh), other)
    assert read_all(str(out)) == read_all(str(fresh))


def test_changed_input_is_another_job(tmp_path, src):
    out = tmp_path / "out"
    compress_folder(src, str(out), CFG)
    from safetensors.torch import load_file, save_file

    f = os.path.join(src, "model-00001-of-00004.safetensors")
    sd = load_file(f)
    sd["layers.0.proj1.weight"][3, 3] += 1  # same names and shapes, other bytes
    save_file(sd, f)
    with pytest.raises(JobError, match="model-00001-of-00004.safetensors: written by another job"):
        compress_folder(src, str(out), CFG)


def test_global_pruning_across_shards_equals_in_memory(tmp_path, src):
    cfg = CompressConfig(sparsity=0.7, bits=2, global_sparsity=True)
    out = str(tmp_path / "out")
    with LocalExecutor(2) as ex:
        compress_folder(src, out, cfg, run=RunOptions(executor=ex))
    ck = open_checkpoint(src)
    selected = [n for n in ck.names if "proj" in n]
    masks = global_magnitude_masks({n: to_float32(ck.get(n))[0] for n in selected}, 0.7)
    assert sum(int(m.sum()) for m in masks.values()) < 0.31 * sum(m.size for m in masks.values())
    from xorsparse.checkpoint.xspset import XspSet
    from xorsparse.tensor.pipeline import decompress_codes

    with XspSet(out) as xs:
        for n in selected:
            keep, _ = decompress_codes(xs.compressed(n))
            assert np.array_equal(keep, masks[n]), n
    ref = reference_state(src, cfg)  # in memory, all tensors at once
    with XspSet(out) as xs:
        for n in selected:
            assert torch.equal(xs.dense(n, framework="torch"), ref[n])
    with LocalExecutor(2) as ex:
        assert all(r["exact"] for r in verify_checkpoint(out, src, executor=ex))
    single = str(tmp_path / "one")
    compress_folder(src, single, cfg)
    assert read_all(single) == read_all(out)


def test_verify_finds_a_wrong_tensor_in_a_shard(tmp_path, src):
    out = str(tmp_path / "out")
    compress_folder(src, out, CFG)
    other = make_folder(tmp_path / "other", seed=1)
    with LocalExecutor(2) as ex:
        rows = verify_checkpoint(out, other, executor=ex)
    assert not any(r["exact"] for r in rows if r["compressed"])
    assert [r["name"] for r in rows] == open_checkpoint(src).names


def test_decompress_folder_in_parallel(tmp_path, src):
    out = str(tmp_path / "out")
    compress_folder(src, out, CFG)
    a, b = str(tmp_path / "dense1"), str(tmp_path / "dense2")
    decompress_folder(out, a)
    with LocalExecutor(2) as ex:
        decompress_folder(out, b, executor=ex)
    assert read_all(a) == read_all(b)
    from safetensors.torch import load_file

    ref = reference_state(src, CFG)
    got = {}
    for f in os.listdir(b):
        if f.endswith(".safetensors"):
            got.update(load_file(os.path.join(b, f)))
    assert set(got) == set(ref) and all(torch.equal(got[n], ref[n]) for n in ref)


MEMORY_PROBE = r"""
import json, os, resource, sys
os.environ["NUMBA_NUM_THREADS"] = "1"
from xorsparse.checkpoint.readers import open_checkpoint
from xorsparse.checkpoint.selection import select_tensors
from xorsparse.jobs.tasks import ShardTask, run_shard_task, shard_settings
from xorsparse.tensor import CompressConfig

def worker_item(folder, out):  # what a worker of a sharded job does with its one shard
    shard = os.path.join(folder, "model-00001-of-00001.safetensors")
    ck = open_checkpoint(shard)
    cfg = CompressConfig(sparsity=0.9, bits=2)
    settings = shard_settings(cfg, ck.names, select_tensors(ck).compressed, None, None, {}, out)
    run_shard_task(ShardTask(0, shard, out, settings))

os.makedirs(sys.argv[3]); os.makedirs(sys.argv[4])
worker_item(sys.argv[1], os.path.join(sys.argv[3], "o.safetensors"))  # warm-up: imports, JIT
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
worker_item(sys.argv[2], os.path.join(sys.argv[4], "o.safetensors"))
print(json.dumps([base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]))
"""


def _peak(tmp_path, tag: str, tensors: int, rows: int, cols: int) -> tuple[int, int]:
    warm = make_folder(tmp_path / f"warm-{tag}", shards=1, per=1, rows=8, cols=64)
    big = make_folder(tmp_path / f"big-{tag}", shards=1, per=tensors, rows=rows, cols=cols)
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, warm, big, str(tmp_path / f"o1-{tag}"),
                        str(tmp_path / f"o2-{tag}")], capture_output=True, text=True, check=True)
    base, peak = json.loads(r.stdout.strip().splitlines()[-1])
    return base, peak


def test_worker_memory_is_bounded_by_the_largest_tensor_not_the_shard(tmp_path):
    """The stated bound (docs/BENCHMARKS.md): a worker's peak RSS stays within its
    baseline (interpreter and libraries) + 4.5 x the largest tensor's float32 bytes, however
    many tensors its shard holds."""
    rows, cols = 1024, 2048
    fp32 = rows * cols * 4
    base1, one = _peak(tmp_path, "one", 1, rows, cols)
    base6, six = _peak(tmp_path, "six", 6, rows, cols)
    assert one - base1 <= 4.5 * fp32 + (16 << 20), (one - base1) / fp32
    assert six - base6 <= 4.5 * fp32 + (16 << 20), (six - base6) / fp32
    assert (six - base6) - (one - base1) <= 0.75 * fp32  # six tensors cost what one costs


def test_failed_job_keeps_finished_shards_and_the_rerun_resumes(tmp_path, src):
    from safetensors.torch import load_file, save_file

    f = os.path.join(src, "model-00003-of-00004.safetensors")
    good = load_file(f)
    bad = dict(good)
    bad["layers.2.proj1.weight"] = bad["layers.2.proj1.weight"].clone()
    bad["layers.2.proj1.weight"][0, 0] = float("nan")
    save_file(bad, f)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="NaN"):
        compress_folder(src, str(out), CFG)  # in this process: shards 1 and 2 are done first
    assert sorted(os.listdir(out)) == ["model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors"]
    save_file(good, f)
    rep = compress_folder(src, str(out), CFG)
    assert [o.reused for o in rep.outcomes] == [True, True, False, False]
    fresh = tmp_path / "fresh"
    compress_folder(src, str(fresh), CFG)
    assert read_all(str(out)) == read_all(str(fresh))


def test_job_key_ignores_the_records_measurements_not_the_calibration():
    """A rerun of a calibrated job measures other timings and may measure another quality:
    its finished shards still match; another calibration does not."""
    from xorsparse.jobs.tasks import job_key

    cal = {"method": "sparsegpt", "samples": 64, "seed": 0, "seconds": {"total": 12.5}}
    a = {"config": {"bits": 2}, "extra": {"calibration": cal, "quality": {"kind": "layer-error"}}}
    b = {"config": {"bits": 2}, "extra": {"calibration": {**cal, "seconds": {"total": 99.0}},
                                          "quality": {"kind": "layer-error", "mean_relative_error": 0.1}}}
    c = {"config": {"bits": 2}, "extra": {"calibration": {**cal, "samples": 128}}}
    assert job_key(a, "0" * 64) == job_key(b, "0" * 64) != job_key(c, "0" * 64)
    assert job_key({"config": {"bits": 2}}, "0" * 64) != job_key({"config": {"bits": 3}}, "0" * 64)
