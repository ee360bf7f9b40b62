"""Golden outputs of a BERT-family sentence encoder, computed independently of spry: a plain
numpy forward pass (float64, no torch) over a Hugging Face folder's config.json,
model.safetensors and tokenizer.json.

Usage:
  python golden_encoder.py MODEL_DIR OUT.json [--model TEXT] [--sentences minilm|encoder]
                           [--pooling mean|cls] [--compare GOLDEN.json] [--onnx MODEL.onnx]

- Tokeniser: the folder's tokenizer.json, padding off, truncation at 256, one sentence at a time.
- Forward: embeddings (word + position + token type 0) and LayerNorm, then per layer post-LN
  self-attention and feed-forward with the GELU that `hidden_act` names (exact erf for "gelu",
  tanh for "gelu_new"/"gelu_pytorch_tanh").
- Pooling: as the folder's sentence-transformers `1_Pooling/config.json` says (mean or CLS), mean
  when there is none, or --pooling; then L2-normalised.
- Written (rounded to 6 decimals, the layout of tests/golden/golden_minilm.json): the sentences,
  token ids, the cosine matrix, the first 8 values of token 0's last hidden state and of each
  embedding.
- --compare GOLDEN.json: max |difference| against another golden file of the same sentences
  (exit status 1 above 1e-4; ids must match exactly). Used to check this reference against
  golden_minilm.json.
- --onnx MODEL.onnx: also run the ONNX graph the weights were converted from with onnx's own
  reference evaluator and report the max |difference| of the last hidden state (exit status 1
  above 1e-4): an end-to-end check of scripts/bert_from_onnx.py.
Needs: numpy, tokenizers, safetensors (and onnx for --onnx).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = {
    # golden_minilm.json's three sentences (the model card's example)
    "minilm": ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
    # the same three, a paraphrase pair, and accents/case/word pieces for the tokenizer
    "encoder": [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
        "A man is playing a guitar.",
        "Someone strums an acoustic guitar on stage.",
        "Unbelievably, the CAFÉ's crème brûlée was über-delicious (10/10)!",
    ],
}


def gelu_fn(act):
    if act == "gelu":
        erf = np.vectorize(math.erf)
        return lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if act in ("gelu_new", "gelu_pytorch_tanh"):
        c = math.sqrt(2.0 / math.pi)
        return lambda x: 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x**3)))
    sys.exit(f"golden_encoder: hidden_act {act!r} is not a GELU")


def pooling_of(model_dir, override):
    if override:
        return override
    path = os.path.join(model_dir, "1_Pooling", "config.json")
    if not os.path.isfile(path):
        return "mean"
    p = json.load(open(path))
    if p.get("pooling_mode_cls_token"):
        return "cls"
    if p.get("pooling_mode_mean_tokens"):
        return "mean"
    sys.exit(f"golden_encoder: unsupported pooling in {path}: {p}")


class Bert:
    def __init__(self, model_dir):
        self.cfg = json.load(open(os.path.join(model_dir, "config.json")))
        assert self.cfg.get("model_type", "bert") == "bert", self.cfg.get("model_type")
        assert self.cfg.get("position_embedding_type", "absolute") == "absolute"
        raw = load_file(os.path.join(model_dir, "model.safetensors"))
        self.W = {k[len("bert."):] if k.startswith("bert.") else k: v.astype(np.float64)
                  for k, v in raw.items()}
        self.H = self.cfg["hidden_size"]
        self.NH = self.cfg["num_attention_heads"]
        self.eps = self.cfg.get("layer_norm_eps", 1e-12)
        self.gelu = gelu_fn(self.cfg.get("hidden_act", "gelu"))

    def ln(self, x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.W[p + ".weight"] + self.W[p + ".bias"]

    def lin(self, x, p):
        return x @ self.W[p + ".weight"].T + self.W[p + ".bias"]

    def forward(self, ids):
        """Last hidden state [T, H] of one unpadded sequence (token types 0)."""
        W, T, NH = self.W, len(ids), self.NH
        HD = self.H // NH
        x = (W["embeddings.word_embeddings.weight"][ids]
             + W["embeddings.position_embeddings.weight"][:T]
             + W["embeddings.token_type_embeddings.weight"][0])
        x = self.ln(x, "embeddings.LayerNorm")
        for l in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{l}."
            q, k, v = (self.lin(x, p + "attention.self." + n).reshape(T, NH, HD).transpose(1, 0, 2)
                       for n in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) / math.sqrt(HD)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(T, self.H)
            x = self.ln(x + self.lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = self.gelu(self.lin(x, p + "intermediate.dense"))
            x = self.ln(x + self.lin(h, p + "output.dense"), p + "output.LayerNorm")
        return x


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--model", default=None, help="the `model` text written in the golden file")
    ap.add_argument("--sentences", choices=sorted(SENTENCES), default="encoder")
    ap.add_argument("--pooling", choices=["mean", "cls"], default=None)
    ap.add_argument("--compare", default=None)
    ap.add_argument("--onnx", default=None)
    args = ap.parse_args()

    bert = Bert(args.model_dir)
    tk = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    tk.no_padding()
    tk.enable_truncation(256)
    pooling = pooling_of(args.model_dir, args.pooling)
    sents = SENTENCES[args.sentences]

    ids, hidden, emb = [], [], []
    for s in sents:
        e = tk.encode(s)
        x = bert.forward(np.array(e.ids))
        v = x.mean(0) if pooling == "mean" else x[0]
        ids.append(e.ids)
        hidden.append(x)
        emb.append(v / np.linalg.norm(v))
    E = np.stack(emb)
    S = E @ E.T
    cfg = bert.cfg
    gold = {
        "model": args.model or os.path.basename(os.path.normpath(args.model_dir)),
        "architecture": {k: cfg.get(k) for k in (
            "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
            "hidden_act", "layer_norm_eps", "vocab_size")},
        "pooling": f"{pooling} over tokens, then L2-normalize; tokenizer without padding, truncation 256",
        "reference": "scripts/golden_encoder.py: numpy float64 forward, no torch",
        "sentences": sents,
        "input_ids": ids,
        "cosine_similarity": S.round(6).tolist(),
        "last_hidden_state_tok0_first8": [x[0, :8].round(6).tolist() for x in hidden],
        "embedding_first8": [e[:8].round(6).tolist() for e in emb],
    }
    with open(args.out, "w") as f:
        json.dump(gold, f, indent=1)
        f.write("\n")
    np.set_printoptions(precision=4, suppress=True)
    print(f"golden_encoder: wrote {args.out} ({len(sents)} sentences, {pooling} pooling)")
    print("cosine similarity:\n", S)

    status = 0
    if args.compare:
        ref = json.load(open(args.compare))
        if ref["sentences"] != sents:
            sys.exit("golden_encoder: --compare file has other sentences (use --sentences minilm?)")
        same_ids = ref["input_ids"] == ids
        worst = 0.0
        for key in ("cosine_similarity", "last_hidden_state_tok0_first8", "embedding_first8"):
            d = max_diff(ref[key], gold[key])
            worst = max(worst, d)
            print(f"compare {key}: max |diff| {d:.3g}")
        # unrounded values against the (6-decimal) reference
        d_full = max(max_diff(ref["last_hidden_state_tok0_first8"], [x[0, :8] for x in hidden]),
                     max_diff(ref["embedding_first8"], [e[:8] for e in emb]),
                     max_diff(ref["cosine_similarity"], S))
        print(f"compare: ids identical: {same_ids}; max |diff| {worst:.3g} (unrounded {d_full:.3g})")
        if not same_ids or worst > 1e-4:
            status = 1

    if args.onnx:
        import onnx
        from onnx.reference import ReferenceEvaluator
        m = onnx.load(args.onnx)
        names = [i.name for i in m.graph.input]
        H = cfg["hidden_size"]
        # the token embeddings: the graph output of rank 3 and width H
        out3 = [o.name for o in m.graph.output
                if len(o.type.tensor_type.shape.dim) == 3
                and o.type.tensor_type.shape.dim[2].dim_value == H]
        if len(out3) != 1:
            sys.exit(f"golden_encoder: cannot find the ONNX last hidden state among {out3}")
        sess = ReferenceEvaluator(m)
        worst = 0.0
        for i, x in zip(ids, hidden):
            feed = {"input_ids": np.array([i], dtype=np.int64),
                    "attention_mask": np.ones((1, len(i)), dtype=np.int64)}
            if "token_type_ids" in names:
                feed["token_type_ids"] = np.zeros((1, len(i)), dtype=np.int64)
            (y,) = sess.run([out3[0]], {k: v for k, v in feed.items() if k in names})
            worst = max(worst, max_diff(y[0], x))
        print(f"onnx: max |diff| of the last hidden state against the original graph {worst:.3g}")
        if worst > 1e-4:
            status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
