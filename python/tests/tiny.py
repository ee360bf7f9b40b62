"""A tiny random-init BERT folder and a tiny labelled file, written from scratch (no download).

Vocabulary: the special tokens and 40 words; 2 layers, hidden 16, 2 heads. Words 0-19 lean
positive, 20-39 negative, so a few rounds move the accuracy.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

WORDS = [f"w{i}" for i in range(40)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 16, 2, 2, 32, 64


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def tokenizer_json(vocab: dict[str, int]) -> dict:
    special = [{"id": vocab[t], "special": True, "content": t, "single_word": False,
                "lstrip": False, "rstrip": False, "normalized": False} for t in SPECIAL]
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [cls], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [sep], "tokens": ["[SEP]"]}},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }


def write_model(dir: Path, seed: int = 0) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    rng = np.random.default_rng(seed)
    n = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)  # noqa: E731
    t = {
        "embeddings.word_embeddings.weight": n(len(vocab), HIDDEN),
        "embeddings.position_embeddings.weight": n(POSITIONS, HIDDEN),
        "embeddings.token_type_embeddings.weight": n(2, HIDDEN),
        "embeddings.LayerNorm.weight": np.ones(HIDDEN, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(HIDDEN, np.float32),
    }
    for l in range(LAYERS):
        p = f"encoder.layer.{l}."
        for m in ("query", "key", "value"):
            t[p + f"attention.self.{m}.weight"] = n(HIDDEN, HIDDEN)
            t[p + f"attention.self.{m}.bias"] = n(HIDDEN)
        t[p + "attention.output.dense.weight"] = n(HIDDEN, HIDDEN)
        t[p + "attention.output.dense.bias"] = n(HIDDEN)
        t[p + "attention.output.LayerNorm.weight"] = np.ones(HIDDEN, np.float32)
        t[p + "attention.output.LayerNorm.bias"] = np.zeros(HIDDEN, np.float32)
        t[p + "intermediate.dense.weight"] = n(FFN, HIDDEN)
        t[p + "intermediate.dense.bias"] = n(FFN)
        t[p + "output.dense.weight"] = n(HIDDEN, FFN)
        t[p + "output.dense.bias"] = n(HIDDEN)
        t[p + "output.LayerNorm.weight"] = np.ones(HIDDEN, np.float32)
        t[p + "output.LayerNorm.bias"] = np.zeros(HIDDEN, np.float32)
    t["pooler.dense.weight"] = n(HIDDEN, HIDDEN)
    t["pooler.dense.bias"] = n(HIDDEN)
    write_safetensors(dir / "model.safetensors", t)
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
              "hidden_size": HIDDEN, "intermediate_size": FFN, "layer_norm_eps": 1e-12,
              "max_position_embeddings": POSITIONS, "num_attention_heads": HEADS,
              "num_hidden_layers": LAYERS, "pad_token_id": 0, "type_vocab_size": 2,
              "vocab_size": len(vocab), "position_embedding_type": "absolute"}
    (dir / "config.json").write_text(json.dumps(config, indent=1))
    (dir / "tokenizer.json").write_text(json.dumps(tokenizer_json(vocab)))
    return dir


def write_data(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["text\tlabel"]
    for _ in range(n):
        label = int(rng.integers(2))
        lo = 0 if label == 1 else 20
        words = [WORDS[lo + int(rng.integers(20))] if rng.random() < 0.7
                 else WORDS[int(rng.integers(40))] for _ in range(int(rng.integers(3, 9)))]
        lines.append(" ".join(words) + f"\t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_experiment(dir: Path, rounds: int = 3, clients: int = 3, per_round: int = 3,
                     comm: str = "per-epoch", extra: str = "") -> Path:
    """A tiny experiment's folder: model/, train.tsv, test.tsv and run.toml; returns run.toml."""
    model = write_model(dir / "model")
    train = write_data(dir / "train.tsv", 240, 1)
    test = write_data(dir / "test.tsv", 60, 2)
    toml = f"""# a tiny Spry run: 2-layer random BERT, {clients} clients
model_dir = "{model}"
train = "{train}"
test = "{test}"
rounds = {rounds}
clients = {clients}
per_round = {per_round}
comm = "{comm}"
partition = "iid"
max_len = 16
batch_size = 8
k = 4
lora_layers = "all"
eval_every = 1
time_budget_s = 0.0
diagnostics = false
personalize_clients = 0
workers = 1
seed = 7
{extra}
"""
    path = dir / "run.toml"
    path.write_text(toml)
    return path
