import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"


@pytest.mark.skipif(not os.path.exists(DATA), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("fashion_mnist", os.path.join(ROOT, "examples", "fashion_mnist.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fashion_mnist"] = mod
    spec.loader.exec_module(mod)
    results = tmp_path / "RESULTS.md"
    code = mod.main(["--tiny", "--out-dir", str(tmp_path), "--results", str(results)])
    assert code == 0
    text = results.read_text()
    assert "| LeNet-5 | 1 |" in text and "| LeNet-300-100 | 2 |" in text
    assert "| NO |" not in text
    assert "## One-shot, without fine-tuning" in text and "| LeNet-5 | 2 |" in text.split("One-shot")[1]
