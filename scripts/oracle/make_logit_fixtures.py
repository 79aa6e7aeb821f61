#!/usr/bin/env python3
"""Logits fixtures for spindle's forward pass, produced by llama.cpp (through llama-cpp-python).

Writes into tests/fixtures/logits/:
  short.bin, medium.bin, long.bin   prompts of 16, 500 and 2000 tokens (the longer ones from the
                                    haystack essays) with llama.cpp's top-8 ids and logits per position
  demo.tsv                          a plain prompt, its ids and llama.cpp's greedy 32-token continuation

llama.cpp settings: Llama(model, n_ctx=4096, n_batch=512, n_threads=2, logits_all=True), default
fp16 K/V cache, CPU. Ids are tokenized by llama.cpp with add_bos=True, which adds BOS only when the
model's tokenizer.ggml.add_bos_token says so (false for SmolLM2: the ids carry no BOS); flag bit 0
of each file records it.

.bin format (little-endian):
  char     magic[4] = "SPLG"
  uint32   version = 1
  uint32   n_tok
  uint32   k            (8)
  uint32   n_vocab
  uint32   flags        bit 0: ids[0] is BOS
  int32    ids[n_tok]                  the prompt
  int32    top_ids[n_tok][k]           per position, the k highest-logit tokens, descending by logit
  float32  top_logits[n_tok][k]        their logits (raw, before any softmax)
Row p is the distribution for the token at position p+1 given ids[0..p] (teacher forcing).

demo.tsv: '#' comments, then key<TAB>value lines: prompt_hex, bos (0/1), prompt_ids, greedy_ids
(32 ids, space-separated; argmax of llama.cpp logits, one token decoded at a time after the prompt).
"""
import argparse
import os
import struct
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy_forward  # noqa: E402  (the fp32 reference, used to pick a well-conditioned demo prompt)

CACHE = "/root/.cache/spindle"
DEFAULT_MODEL = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
HAYSTACK = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "haystack"))
K = 8
N_GREEDY = 32
SHORT_TEXT = "The quick brown fox jumps over the lazy dog. In the beginning, there was"
# Demo prompt candidates, tried in order. llama.cpp quantizes activations (Q8) and keeps K/V in fp16,
# so near-ties on a 32-step greedy path can legitimately flip in an fp32 implementation (they even
# flip between llama.cpp's own batched and one-token paths). The first candidate whose llama.cpp
# greedy path is also the argmax path of the independent numpy fp32 forward pass
# (scripts/oracle/numpy_forward.py, teacher-forced on prompt + continuation) is used, so the
# "identical greedy continuation" test asks for agreement two implementations already reach.
DEMO_PROMPTS = ["The three most important inventions of the 20th century were",
                "Here is a short story about a robot who learns to paint:",
                "The water cycle works as follows:",
                "Once upon a time, in a small village by the sea,",
                "Python is a programming language that",
                "The capital of France is",
                "Water boils at 100 degrees Celsius because",
                "My favorite food is pizza because",
                "The sun rises in the east and"]
# (name, essay files concatenated in this order, tokens)
LONG_PROMPTS = [("medium", ["gap.txt"], 500),
                ("long", ["worked.txt"], 2000)]


def tokenize(llm, b):
    return llm.tokenize(b, add_bos=True, special=False)


def essay_ids(llm, files, n):
    text = b""
    for f in files:
        path = os.path.join(HAYSTACK, "pg_essays", f)
        if not os.path.exists(path):
            raise SystemExit("missing haystack essay %s" % path)
        text += open(path, "rb").read()
        ids = tokenize(llm, text)
        if len(ids) > n:
            return ids[:n]
    raise SystemExit("essays %s give fewer than %d tokens" % (files, n))


def top_k(llm, ids):
    llm.reset()
    llm.eval(ids)
    scores = np.asarray(llm.scores[:len(ids)], dtype=np.float32)
    # stable sort on -logit: ties keep the lower id first, like an argmax scan
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K].astype(np.int32)
    vals = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    return order, vals


def greedy_path(llm, pids):
    """llama.cpp greedy continuation (argmax, one decode step per token) and its top1-top2 margins."""
    llm.reset()
    llm.eval(pids)
    greedy, margins = [], []
    for _ in range(N_GREEDY):
        row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        nxt = int(np.argmax(row))
        two = np.partition(row, -2)[-2:]
        margins.append(float(two[1] - two[0]))
        greedy.append(nxt)
        llm.eval([nxt])
    return greedy, margins


def write_bin(path, ids, bos, top_ids, top_vals, n_vocab):
    with open(path, "wb") as fh:
        fh.write(b"SPLG")
        fh.write(struct.pack("<5I", 1, len(ids), K, n_vocab, 1 if bos else 0))
        fh.write(np.asarray(ids, dtype="<i4").tobytes())
        fh.write(top_ids.astype("<i4").tobytes())
        fh.write(top_vals.astype("<f4").tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "logits"))
    ap.add_argument("--demo-only", action="store_true", help="only rewrite demo.tsv")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    llm = Llama(model_path=args.model, n_ctx=4096, n_batch=512, n_threads=2, n_threads_batch=2,
                logits_all=True, verbose=False)
    n_vocab = llm.n_vocab()
    bos_id = llm.token_bos()
    header = ("# llama.cpp via llama-cpp-python %s; model %s; n_ctx=4096 n_batch=512 n_threads=2 "
              "logits_all fp16 KV; generated by scripts/oracle/make_logit_fixtures.py"
              % (llama_cpp.__version__, os.path.basename(args.model)))

    prompts = [("short", tokenize(llm, SHORT_TEXT.encode())[:16])]
    prompts += [(name, essay_ids(llm, files, n)) for name, files, n in LONG_PROMPTS]
    for name, ids in ([] if args.demo_only else prompts):
        bos = bool(ids[:1] == [bos_id] and llm.tokenize(b"x", add_bos=True)[:1] == [bos_id])
        top_ids, top_vals = top_k(llm, ids)
        path = os.path.join(args.out, name + ".bin")
        write_bin(path, ids, bos, top_ids, top_vals, n_vocab)
        print("%s: %d tokens, bos=%d, %d bytes" % (name, len(ids), bos, os.path.getsize(path)))

    # demo: prompt ids and greedy continuation, one token at a time through llama.cpp's decode path
    ref_model = numpy_forward.Model(args.model)
    for DEMO_PROMPT in DEMO_PROMPTS:
        pids = tokenize(llm, DEMO_PROMPT.encode())
        bos = bool(pids[:1] == [bos_id] and llm.tokenize(b"x", add_bos=True)[:1] == [bos_id])
        greedy, margins = greedy_path(llm, pids)
        # cross-check with llama.cpp's own greedy sampler (top_k=1, temp 0)
        llm.reset()
        sampled = []
        for tok in llm.generate(pids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            sampled.append(int(tok))
            if len(sampled) == N_GREEDY:
                break
        # and with a batched teacher-forced pass over prompt + continuation
        tf_ids, tf_vals = top_k(llm, pids + greedy)
        tf = [int(x) for x in tf_ids[len(pids) - 1:-1, 0]]
        tf_margin = float((tf_vals[len(pids) - 1:-1, 0] - tf_vals[len(pids) - 1:-1, 1]).min())
        # and with the numpy fp32 reference, teacher-forced
        _, np_logits = numpy_forward.forward(ref_model, pids + greedy[:-1])
        np_greedy = [int(x) for x in np_logits[len(pids) - 1:].argmax(axis=1)]
        np_agree = sum(a == b for a, b in zip(np_greedy, greedy))
        ok = sampled == greedy and np_greedy == greedy
        print("demo candidate %r: min top1-top2 margin decode %.3f, batched %.3f; sampler agrees %s; "
              "batched agrees %d/%d; numpy fp32 agrees %d/%d -> %s"
              % (DEMO_PROMPT, min(margins), tf_margin, sampled == greedy,
                 sum(a == b for a, b in zip(tf, greedy)), N_GREEDY, np_agree, N_GREEDY, "use" if ok else "skip"))
        if ok:
            break
    else:
        raise SystemExit("no demo prompt has a well-conditioned greedy path")
    text = llm.detokenize(greedy).decode("utf-8", "replace")
    with open(os.path.join(args.out, "demo.tsv"), "w") as fh:
        fh.write(header + "\n")
        fh.write("# prompt: %r\n# continuation: %r\n" % (DEMO_PROMPT, text))
        fh.write("# greedy path: smallest top1-top2 logit margin %.3f (decode) / %.3f (batched teacher-forced);"
                 " numpy fp32 teacher-forced argmax agrees 32/32, llama.cpp batched pass agrees %d/32\n"
                 % (min(margins), tf_margin, sum(a == b for a, b in zip(tf, greedy))))
        fh.write("# eos id %d %s in the continuation\n" % (llm.token_eos(), "appears" if llm.token_eos() in greedy else "does not appear"))
        fh.write("prompt_hex\t%s\n" % DEMO_PROMPT.encode().hex())
        fh.write("bos\t%d\n" % (1 if bos else 0))
        fh.write("prompt_ids\t%s\n" % " ".join(map(str, pids)))
        fh.write("greedy_ids\t%s\n" % " ".join(map(str, greedy)))
    print("demo: %d prompt ids (bos=%d), greedy: %s\n  %r" % (len(pids), bos, greedy, text))
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
