"""Every ```python and ```sh snippet of README.md runs as written, in order, in one folder
(```text blocks are synopses). The shell snippets use the venv's `xorsparse` and `python`."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snippets():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(python|sh)\n(.*?)```", text, re.S)]


def test_readme_has_runnable_snippets():
    kinds = [k for k, _ in snippets()]
    assert kinds.count("python") >= 3 and kinds.count("sh") >= 1


def test_readme_snippets_run_as_written(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    for i, (kind, code) in enumerate(snippets()):
        cmd = [sys.executable, "-c", code] if kind == "python" else ["bash", "-euo", "pipefail", "-c", code]
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"README snippet {i + 1} ({kind}) failed:\n{code}\n{res.stderr[-3000:]}"
