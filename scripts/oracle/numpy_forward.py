#!/usr/bin/env python3
"""Plain fp32 numpy forward pass of a llama-arch GGUF model: spindle's layer-by-layer reference.

Independent of llama.cpp's compute graph: weights come from the `gguf` PyPI package (GGUFReader +
gguf.quants.dequantize), and every activation, K and V stay in float32 (no fp16 KV, no quantized
activations). Writes tests/fixtures/reference/<name>.bin (format in tests/fixtures/reference/README.md):
the residual stream after the embedding and after every layer for all positions of a fixed prompt,
plus the final logits of the last position.

Model math (llama.cpp 'llama' arch):
  x = token_embd[ids]
  per layer: h = rmsnorm(x) * attn_norm; q,k,v = h Wq^T, h Wk^T, h Wv^T
             RoPE 'normal' (adjacent pairs (2i, 2i+1), theta_i = pos * base^(-2i/d)) on q and k
             causal softmax(q k^T / sqrt(d)) v with GQA (q head j reads kv head j // (n_head/n_kv))
             x += attn_out Wo^T;  h = rmsnorm(x) * ffn_norm;  x += (silu(h Wg^T) * (h Wu^T)) Wd^T
  logits = (rmsnorm(x) * output_norm) W_out^T, W_out = output.weight or token_embd (tied)

--validate compares the logits of every position with llama.cpp's (through llama-cpp-python) on
the same ids and prints max |diff| and top-1 agreement; needs the oracle venv.
"""
import argparse
import os
import struct
import sys

import numpy as np
import gguf
from gguf.quants import dequantize

CACHE = "/root/.cache/spindle"
DEFAULT_MODEL = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

# The fixed prompt. IDS is llama.cpp's tokenization of PROMPT with the default model
# (add_bos as the model wants: SmolLM2 has add_bos_token=false, so no BOS); --validate re-checks it.
PROMPT = "The capital of France is Paris and the capital of Germany is"

MAGIC = b"SPRF"
VERSION = 1


class Model:
    def __init__(self, path):
        r = gguf.GGUFReader(path)
        self.f = {k: v for k, v in r.fields.items()}
        arch = self.kv("general.architecture")
        if arch != "llama":
            raise SystemExit("only llama arch supported, got %s" % arch)
        self.n_layer = self.kv("llama.block_count")
        self.n_embd = self.kv("llama.embedding_length")
        self.n_head = self.kv("llama.attention.head_count")
        self.n_kv = self.kv("llama.attention.head_count_kv")
        self.eps = float(np.float32(self.kv("llama.attention.layer_norm_rms_epsilon")))
        self.base = float(np.float32(self.kv("llama.rope.freq_base")))
        self.head_dim = self.n_embd // self.n_head
        self.rope_dim = self.kv("llama.rope.dimension_count", self.head_dim)
        self.t = {t.name: t for t in r.tensors}
        self.tied = "output.weight" not in self.t
        self.cache = {}

    def kv(self, key, default=None):
        if key not in self.f:
            if default is None:
                raise KeyError(key)
            return default
        return self.f[key].contents()

    def w(self, name):
        """Dequantized tensor as float32, numpy order (ggml ne reversed): [rows=out][cols=in]."""
        if name in self.cache:
            return self.cache[name]
        t = self.t[name]
        a = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        shape = tuple(int(x) for x in reversed(t.shape))
        self.cache[name] = a.reshape(shape)
        return self.cache[name]


def rmsnorm(x, w, eps):
    x64 = x.astype(np.float32)
    ms = np.mean(x64 * x64, axis=-1, keepdims=True, dtype=np.float32)
    return (x64 / np.sqrt(ms + np.float32(eps))).astype(np.float32) * w


def rope_normal(x, pos, base, n_rot):
    """x: [n_tok][n_heads][head_dim]; rotates adjacent pairs (2i, 2i+1) for 2i < n_rot."""
    d = x.shape[-1]
    i = np.arange(n_rot // 2, dtype=np.float64)
    inv = base ** (-2.0 * i / n_rot)
    ang = pos[:, None].astype(np.float64) * inv[None, :]      # [n_tok][n_rot/2]
    cos = np.cos(ang).astype(np.float32)[:, None, :]
    sin = np.sin(ang).astype(np.float32)[:, None, :]
    out = x.copy()
    x0 = x[..., 0:n_rot:2]
    x1 = x[..., 1:n_rot:2]
    out[..., 0:n_rot:2] = x0 * cos - x1 * sin
    out[..., 1:n_rot:2] = x0 * sin + x1 * cos
    assert d >= n_rot
    return out


def silu(x):
    return x / (np.float32(1.0) + np.exp(-x))


def forward(m, ids):
    """Returns (hidden [n_layer+1][n_tok][n_embd], logits [n_tok][n_vocab]), all float32."""
    n = len(ids)
    emb = m.w("token_embd.weight")
    x = emb[np.asarray(ids)].astype(np.float32)
    hidden = [x.copy()]
    pos = np.arange(n)
    hd, nh, nkv = m.head_dim, m.n_head, m.n_kv
    group = nh // nkv
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
    scale = np.float32(1.0 / np.sqrt(hd))
    for L in range(m.n_layer):
        p = "blk.%d." % L
        h = rmsnorm(x, m.w(p + "attn_norm.weight"), m.eps)
        q = (h @ m.w(p + "attn_q.weight").T).reshape(n, nh, hd)
        k = (h @ m.w(p + "attn_k.weight").T).reshape(n, nkv, hd)
        v = (h @ m.w(p + "attn_v.weight").T).reshape(n, nkv, hd)
        q = rope_normal(q, pos, m.base, m.rope_dim)
        k = rope_normal(k, pos, m.base, m.rope_dim)
        att = np.empty((n, nh, hd), dtype=np.float32)
        for j in range(nh):
            kj, vj = k[:, j // group, :], v[:, j // group, :]
            s = (q[:, j, :] @ kj.T) * scale + mask            # [n][n]
            s = s - s.max(axis=-1, keepdims=True)
            e = np.exp(s)
            att[:, j, :] = (e / e.sum(axis=-1, keepdims=True)) @ vj
        x = x + att.reshape(n, nh * hd) @ m.w(p + "attn_output.weight").T
        h = rmsnorm(x, m.w(p + "ffn_norm.weight"), m.eps)
        g = h @ m.w(p + "ffn_gate.weight").T
        u = h @ m.w(p + "ffn_up.weight").T
        x = x + (silu(g) * u) @ m.w(p + "ffn_down.weight").T
        hidden.append(x.copy())
    h = rmsnorm(x, m.w("output_norm.weight"), m.eps)
    wout = emb if m.tied else m.w("output.weight")
    logits = h @ wout.T
    return np.stack(hidden).astype(np.float32), logits.astype(np.float32)


def f32_copy(m, src):
    """A GGUF copy of src with every tensor dequantized to F32 (cached under /root/.cache/spindle).

    With F32 weights and an F32 K/V cache llama.cpp quantizes nothing, so its logits must match this
    numpy pass to float32 accumulation noise: that checks the model math itself, op for op.
    """
    dst = os.path.join(CACHE, "oracle-f32-" + os.path.basename(src))
    if os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(src):
        return dst
    w = gguf.GGUFWriter(dst + ".tmp", m.kv("general.architecture"))
    for name, f in m.f.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        val = f.contents()
        if name == "general.file_type":
            val = 0  # LLAMA_FTYPE_ALL_F32
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, val, f.types[0], sub_type=sub)
    for name in m.t:
        w.add_tensor(name, np.ascontiguousarray(m.w(name), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(dst + ".tmp", dst)
    return dst


def llama_cpp_logits(model, ids, f32_kv=False):
    from llama_cpp import Llama
    kw = dict(type_k=0, type_v=0, flash_attn=False) if f32_kv else {}  # 0 = GGML_TYPE_F32
    llm = Llama(model_path=model, n_ctx=max(64, len(ids)), n_threads=2, logits_all=True, verbose=False, **kw)
    llm.eval(ids)
    out = np.array(llm.scores[:len(ids)], dtype=np.float32)
    llm.close()
    return out


def llama_cpp_version():
    import llama_cpp
    return llama_cpp.__version__


def llama_cpp_ids(model, text):
    from llama_cpp import Llama
    llm = Llama(model_path=model, vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)  # add_bos honours the model flag
    llm.close()
    return ids


def write(path, ids, hidden, logits_last):
    n_rows, n_tok, n_embd = hidden.shape
    with open(path, "wb") as fh:
        fh.write(MAGIC)
        fh.write(struct.pack("<6I", VERSION, n_tok, n_rows, n_embd, logits_last.shape[0], 0))
        fh.write(np.asarray(ids, dtype="<i4").tobytes())
        fh.write(hidden.astype("<f4").tobytes())
        fh.write(logits_last.astype("<f4").tobytes())


def read_splg(path):
    """(ids, top_ids [n][k], top_vals [n][k], n_vocab) from a tests/fixtures/logits .bin file."""
    b = open(path, "rb").read()
    if b[:4] != b"SPLG":
        raise SystemExit("%s: not an SPLG file" % path)
    _, n, k, n_vocab, _ = struct.unpack("<5I", b[4:24])
    o = 24
    ids = np.frombuffer(b, "<i4", n, o).tolist()
    o += 4 * n
    ti = np.frombuffer(b, "<i4", n * k, o).reshape(n, k)
    o += 4 * n * k
    tv = np.frombuffer(b, "<f4", n * k, o).reshape(n, k)
    return ids, ti, tv, n_vocab


def logits_fixtures(m, d):
    """For each llama.cpp logits fixture <name>.bin in d, write <name>.fp32.bin (same SPLG format,
    flags bit 1 set: numpy fp32 logits) on the same ids, and summarize the agreement in agreement.txt."""
    out = ["numpy fp32 reference (scripts/oracle/numpy_forward.py --logits-dir) vs llama.cpp fixtures, teacher-forced",
           "gap = llama.cpp's top-1 logit minus llama.cpp's logit of the fp32 top-1 token (0 when they agree)"]
    for name in ("short", "medium", "long"):
        path = os.path.join(d, name + ".bin")
        if not os.path.exists(path):
            continue
        ids, ti, tv, n_vocab = read_splg(path)
        _, lg = forward(m, ids)
        k = ti.shape[1]
        order = np.argsort(-lg, axis=1, kind="stable")[:, :k].astype(np.int32)
        vals = np.take_along_axis(lg, order, axis=1)
        with open(os.path.join(d, name + ".fp32.bin"), "wb") as fh:
            fh.write(b"SPLG")
            fh.write(struct.pack("<5I", 1, len(ids), k, n_vocab, 2))
            fh.write(np.asarray(ids, dtype="<i4").tobytes())
            fh.write(order.astype("<i4").tobytes())
            fh.write(vals.astype("<f4").tobytes())
        top = order[:, 0]
        agree = top == ti[:, 0]
        margin = tv[:, 0] - tv[:, 1]
        in8 = np.array([top[i] in ti[i] for i in range(len(ids))])
        gap = np.array([tv[i, 0] - tv[i, list(ti[i]).index(top[i])] if in8[i] else np.inf for i in range(len(ids))])
        sure = margin >= 0.5
        out.append("%s: %d positions; top-1 agreement %d (%.2f%%); at the %d positions where llama.cpp's "
                   "top1-top2 margin >= 0.5: %d agree; fp32 top-1 inside llama.cpp top-8: %d; max gap %.3f; "
                   "max |fp32 - llama.cpp| over llama.cpp's top-1 logits %.3f"
                   % (name, len(ids), agree.sum(), 100.0 * agree.mean(), sure.sum(), (agree & sure).sum(),
                      in8.sum(), gap.max(), np.abs(lg[np.arange(len(ids)), ti[:, 0]] - tv[:, 0]).max()))
        print(out[-1])
    with open(os.path.join(d, "agreement.txt"), "w") as fh:
        fh.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "reference", "smollm2-135m-q4_1.bin"))
    ap.add_argument("--ids", help="comma-separated ids (default: llama.cpp's tokenization of the fixed prompt)")
    ap.add_argument("--validate", action="store_true", help="compare with llama.cpp logits")
    ap.add_argument("--logits-dir", help="write <name>.fp32.bin next to llama.cpp's logits fixtures in this dir")
    args = ap.parse_args()

    if args.logits_dir:
        logits_fixtures(Model(args.model), args.logits_dir)
        return 0
    if args.ids:
        ids = [int(s) for s in args.ids.split(",")]
    else:
        ids = llama_cpp_ids(args.model, PROMPT)
        if len(ids) != 12:
            raise SystemExit("the fixed prompt should be 12 tokens, llama.cpp gives %d" % len(ids))
    print("prompt ids (%d): %s" % (len(ids), ids))
    m = Model(args.model)
    hidden, logits = forward(m, ids)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write(args.out, ids, hidden, logits[-1])
    print("wrote %s (%d bytes): hidden %s, logits[%d]" % (args.out, os.path.getsize(args.out), hidden.shape, logits.shape[1]))
    print("numpy top-1 per position: %s" % logits.argmax(axis=1).tolist())

    if args.validate:
        ref = llama_cpp_logits(args.model, ids)
        d = np.abs(ref - logits)
        top_np, top_ll = logits.argmax(axis=1), ref.argmax(axis=1)
        agree = int((top_np == top_ll).sum())
        top8 = [len(set(np.argsort(-logits[p])[:8]) & set(np.argsort(-ref[p])[:8])) for p in range(len(ids))]
        report = [
            "numpy fp32 reference vs llama.cpp (llama-cpp-python %s, fp16 KV, n_threads=2) on ids %s"
            % (llama_cpp_version(), ids),
            "logits, all %d positions: max|diff| %.4f, mean|diff| %.4f; last position max|diff| %.4f; "
            "llama.cpp logit range [%.2f, %.2f]" % (len(ids), d.max(), d.mean(), d[-1].max(), ref.min(), ref.max()),
            "top-1 agreement %d/%d (numpy %s, llama.cpp %s)" % (agree, len(ids), top_np.tolist(), top_ll.tolist()),
            "top-8 set overlap per position: %s" % top8,
        ]
        # Exact-math check: llama.cpp on an all-F32 copy of the model with an F32 K/V cache.
        ref32 = llama_cpp_logits(f32_copy(m, args.model), ids, f32_kv=True)
        d32 = np.abs(ref32 - logits)
        report.append("exact-math check, llama.cpp on an all-F32 copy of the model with F32 K/V: "
                      "max|diff| %.6f, mean|diff| %.6f, top-1 %d/%d"
                      % (d32.max(), d32.mean(), int((ref32.argmax(axis=1) == top_np).sum()), len(ids)))
        # Where the default-settings difference comes from: fp16 K/V alone vs quantized weights and
        # activations alone.
        for what, path, f32kv in (("F32 weights, fp16 K/V", f32_copy(m, args.model), False),
                                  ("Q4_1 weights (Q8 activations), F32 K/V", args.model, True)):
            r = llama_cpp_logits(path, ids, f32_kv=f32kv)
            dd = np.abs(r - logits)
            report.append("breakdown, llama.cpp with %s: max|diff| %.4f, mean|diff| %.4f, top-1 %d/%d"
                          % (what, dd.max(), dd.mean(), int((r.argmax(axis=1) == top_np).sum()), len(ids)))
        print("\n".join(report))
        with open(os.path.join(os.path.dirname(args.out), "validation.txt"), "w") as fh:
            fh.write("\n".join(report) + "\n")
        if agree != len(ids):
            print("VALIDATION FAILED: top-1 disagreement", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
