"""Rebuild the third-party parts of the built-in calibration and held-out text
(src/xorsparse/data/, sources and licenses in its README.md) from Debian packages and the
Python standard library. Run by hand, not at install time; the output is committed.

    apt-get download bible-kjv-text wordnet-base dict-jargon   # then dpkg -x each into ROOT
    apt-get install bible-kjv                                   # the `bible` reader
    python tools/make_calibration_data.py ROOT /usr/lib/python3.11 src/xorsparse/data

Every choice is seeded, so the same packages give the same files.
"""

from __future__ import annotations

import ast
import gzip
import os
import random
import re
import subprocess
import sys

SEED = 20


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def kjv_narrative(limit: int) -> list[str]:
    """Narrative and reported dialogue: whole chapters of story books, 3 verses a sample."""
    chapters = [("Genesis", c) for c in range(37, 46)] + [("Ruth", c) for c in range(1, 5)] + \
        [("Jonah", c) for c in range(1, 5)] + [("Esther", c) for c in range(1, 9)] + \
        [("Luke", 15)] + [("Acts", c) for c in (12, 16, 27, 28)] + [("1Samuel", c) for c in (17, 18, 19)]
    out = []
    for book, ch in chapters:
        text = subprocess.run(["bible", "-f", f"{book}{ch}:1-200"], capture_output=True, text=True).stdout
        verses = [squash(re.sub(r"^\S+:\d+\s+", "", v)) for v in text.splitlines() if re.match(r"^\S+\d+:\d+ ", v)]
        out += [" ".join(verses[i:i + 3]) for i in range(0, len(verses) - 2, 3)]
    return random.Random(SEED).sample(out, min(limit, len(out)))


def wordnet_usage(root: str, limit: int) -> list[str]:
    """Definitions with their example sentences (everyday usage), nouns / verbs / adjectives."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(root, "usr/share/wordnet", f"data.{pos}"), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "| " not in line:
                    continue
                head, gloss = line.split("| ", 1)
                examples = re.findall(r'"([^"]{25,})"', gloss)
                if len(examples) < 2:
                    continue
                word = head.split()[4].replace("_", " ")
                definition = squash(gloss.split(";")[0])
                out.append(f"{word}: {definition}. " + " ".join(e.strip().rstrip(".") + "." for e in examples))
    return random.Random(SEED).sample(out, min(limit, len(out)))


def python_comments(stdlib: str, limit: int) -> list[str]:
    """Code comments (blocks of 3+ comment lines) and docstrings of the standard library."""
    blocks, docs = [], []
    for name in sorted(os.listdir(stdlib)):
        if not name.endswith(".py") or name.startswith("_") or "test" in name:
            continue
        src = open(os.path.join(stdlib, name), encoding="utf-8", errors="replace").read()
        run: list[str] = []
        for ln in src.splitlines() + [""]:
            s = ln.strip()
            if s.startswith("#") and not s.startswith("#!") and "coding" not in s and "Copyright" not in s:
                run.append(s.lstrip("#").strip())
            else:
                if len(run) >= 3 and sum(len(r) for r in run) > 120 and not any("License" in r for r in run):
                    blocks.append(squash(" ".join(run)))
                run = []
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                d = ast.get_docstring(node)
                if d and 120 < len(d) < 900 and ">>>" not in d:
                    docs.append(squash(d.split("\n\n")[0] if len(d) > 600 else d))
    rng = random.Random(SEED)
    half = limit // 2
    return rng.sample(blocks, min(half, len(blocks))) + rng.sample(docs, min(limit - half, len(docs)))


def jargon_entries(root: str, limit: int) -> list[str]:
    """The first paragraph of Jargon File entries: an informal lexicon of hacker slang."""
    raw = gzip.open(os.path.join(root, "usr/share/dictd/jargon.dict.dz"), "rt", encoding="utf-8").read()
    out = []
    for entry in re.split(r"\n(?=\S)", raw):
        lines = entry.split("\n")
        head = lines[0].strip()
        paras = [squash(p) for p in "\n".join(lines[2:]).split("\n\n") if p.strip()]
        if not paras or not re.match(r"^[A-Za-z][\w .'-]{1,40}$", head):
            continue
        body = re.sub(r"\[[^\]]*\]\s*", "", paras[0]).replace("{", "").replace("}", "")
        if 150 < len(body) < 700:
            out.append(f"{head}: {body}")
    return random.Random(SEED).sample(out, min(limit, len(out)))


def write(path: str, lines: list[str]) -> None:
    lines = [ln for ln in lines if ln]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{path}: {len(lines)} lines, {os.path.getsize(path)} bytes")


def main(root: str, stdlib: str, out: str) -> None:
    write(os.path.join(out, "mix_kjv_narrative.txt"), kjv_narrative(200))
    write(os.path.join(out, "mix_wordnet_usage.txt"), wordnet_usage(os.path.join(root, "wordnet-base"), 400))
    write(os.path.join(out, "mix_python_comments.txt"), python_comments(stdlib, 300))
    write(os.path.join(out, "ood_jargon.txt"), jargon_entries(os.path.join(root, "dict-jargon"), 240))


if __name__ == "__main__":
    main(*sys.argv[1:4])
