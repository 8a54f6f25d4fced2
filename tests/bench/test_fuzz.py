"""The fuzz harness: it must see crashes, hangs and memory blowups, and a short run has no bad outcome."""

import ctypes
import random
import time

import numpy as np

from benchmarks import fuzz
from benchmarks.xspedit import XspImage


def test_fork_case_classifies_what_goes_wrong():
    assert fuzz.fork_case(lambda: {"outcome": "error"})["outcome"] == "error"
    assert fuzz.fork_case(lambda: {"outcome": "x", "n": ctypes.string_at(0, 8)})["outcome"] == "crash"
    hang = fuzz.fork_case(lambda: time.sleep(30) or {}, wall=1.0)
    assert hang["outcome"] == "hang" and hang["seconds"] < 10
    spin = fuzz.fork_case(lambda: [None for _ in iter(int, 1)], cpu=1, wall=60)
    assert spin["outcome"] == "hang"
    big = fuzz.fork_case(lambda: {"outcome": "identical", "a": float(np.ones(1 << 28).sum())}, headroom=512 << 20)
    assert big["outcome"] == "memory"
    peak = fuzz.fork_case(lambda: {"outcome": "identical", "a": float(np.ones(40 << 17).sum())})  # 40 MiB
    assert peak["outcome"] == "identical" and 35 << 10 < peak["peak_kb"] < 60 << 10
    assert fuzz.classify(dict(peak, peak_kb=300 << 10), {}, True, 1000) == "memory"


def test_mutations_are_deterministic_and_varied(tmp_path):
    bases = fuzz.make_bases(str(tmp_path))
    assert len(bases) >= 5
    data = open(bases[0], "rb").read()
    a = [fuzz.Mutator(data, random.Random(s)).case() for s in range(200)]
    b = [fuzz.Mutator(data, random.Random(s)).case() for s in range(200)]
    assert a == b
    kinds = {k.split("+")[0] for _, k, _ in a}
    assert len(kinds) > 25 and any(k.startswith("raw:") for k in kinds)
    assert sum(f for _, _, f in a) > 80 and sum(d != data for d, _, _ in a) > 190
    # a forged mutation still passes the description checksum
    img = XspImage.loads(data)
    img.doc["tensors"]["w.weight"]["planes"][0]["care_bits"] = 7
    from xorsparse.format.container import XspFile

    p = tmp_path / "forged.xsp"
    p.write_bytes(img.dumps(resign=True))
    with XspFile(p) as f:
        assert f.desc.tensors["w.weight"].planes[0].care_bits == 7


def test_short_run_has_no_bad_outcome():
    """The benchmark's short form (docs/BENCHMARKS.md section 14 has the long runs)."""
    res = fuzz.run(300, seed=11, workers=2)
    assert res["bad"] == 0, res["bad_examples"]
    assert res["total"]["error"] > 150 and res["raw_cases"] > 50
    assert sum(res["total"].values()) == 300
