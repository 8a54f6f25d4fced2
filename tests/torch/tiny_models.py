"""Tiny Hugging Face model folders built from configs with random weights (never downloaded)."""

from __future__ import annotations

import json
import os
import re

import torch

from xorsparse.data.calibdata import builtin_texts

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> list[str]:
    words: dict[str, int] = {}
    for t in builtin_texts("calibration") + builtin_texts("heldout"):
        for w in re.findall(r"[a-z]+|[^a-z\s]", t.lower()):
            words[w] = words.get(w, 0) + 1
    common = sorted(words, key=lambda w: (-words[w], w))[:600]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = ["##" + c for c in letters]
    return SPECIAL + sorted(set(common) | set(letters)) + pieces


def _tokenizer(path: str):
    from transformers import BertTokenizerFast

    vocab = os.path.join(path, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(_vocab()) + "\n")
    tok = BertTokenizerFast(vocab_file=vocab, do_lower_case=True)
    tok.save_pretrained(path)
    return tok


def tiny_bert(path: str, sentence_transformers: bool = True, layers: int = 2, seed: int = 0) -> str:
    from transformers import BertConfig, BertModel

    os.makedirs(path, exist_ok=True)
    tok = _tokenizer(path)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(path)
    if sentence_transformers:
        with open(os.path.join(path, "modules.json"), "w") as f:
            json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                       {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                       {"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"}], f)
        with open(os.path.join(path, "sentence_bert_config.json"), "w") as f:
            json.dump({"max_seq_length": 64, "do_lower_case": False}, f)
        os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
        with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
            json.dump({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}, f)
    return path


def tiny_llama(path: str, seed: int = 0) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(path, exist_ok=True)
    tok = _tokenizer(path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path
