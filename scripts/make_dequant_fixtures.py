#!/usr/bin/env python3
"""Regenerate tests/fixtures/dequant/: raw ggml blocks + the fp32 values the `gguf` PyPI package's
own dequantizer (gguf.quants.dequantize) produces for them. tests/test_dequant.c checks that
cpu/dequant.c reproduces these values bit for bit, so the oracle is independent of our C code.

Usage:  python3 scripts/make_dequant_fixtures.py [OUT_DIR]     (default: tests/fixtures/dequant)
        python3 scripts/make_dequant_fixtures.py --fuzz-corpus DIR
            writes the seed corpus of tests/fuzz/fuzz_gguf.c instead: small synthetic GGUFs written
            by gguf-py's GGUFWriter (every value type, nested arrays, the model's tensor types) and
            near-valid variants (v2, alignment 64, truncated, corrupted counts); each a few KB,
            named *.seed (not *.gguf, which .gitignore keeps out of git for the models).
Needs:  pip install gguf numpy   (written against gguf 0.19.0, numpy 2.x)

File format, one file per type, named <TYPE>.bin (e.g. Q4_1.bin), all integers little-endian:
    offset  size  field
    0       4     magic "SPDQ"
    4       4     u32 format version (1)
    8       4     u32 ggml type id (gguf.GGMLQuantizationType value)
    12      4     u32 n_blocks
    16      4     u32 block_elems  (elements per block, from gguf.constants.GGML_QUANT_SIZES)
    20      4     u32 block_bytes  (bytes per block, same source)
    24      n_blocks*block_bytes          raw quantized bytes, exactly as stored in a GGUF file
    ...     n_blocks*block_elems*4        expected output, float32 little-endian
For F32/F16/BF16 a "block" is one element.

If the default model is present (env SPINDLE_MODEL, else ~/.cache/spindle/models/
SmolLM2-135M-Instruct.Q4_1.gguf), also writes model_rows.bin: a few rows of real tensors read and
dequantized by gguf.GGUFReader + gguf.quants, so tests/test_gguf.c can check our reader's offsets
and dequant end to end. Format (little-endian):
    "SPMR", u32 version (1), u32 n_records, then per record:
    u32 name_len, name bytes (no NUL), u32 ggml type id, u64 row index, u32 n_elems,
    float32[n_elems] expected row values.

Contents (fixed seed, so regeneration is reproducible):
  - quantized types: half of the blocks come from quantizing random normal data with gguf's own
    quantizer where it has one (realistic scales); the rest are random bytes whose fp16 scale/min
    fields are forced finite (random exponents, subnormals and negative scales included), which
    exercises every bit of the packed layouts;
  - F16/BF16/F32: random bit patterns plus zeros, -0, subnormals, +-inf and NaNs (the test compares
    NaN-aware).
"""
import os
import struct
import sys

import numpy as np
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

SEED = 20251123
OUT = sys.argv[1] if len(sys.argv) == 2 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "dequant")

# Byte offsets of the fp16 fields (d, m/dmin) inside one block, per ggml-common.h.
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
N_BLOCKS = {T.Q4_0: 16, T.Q4_1: 16, T.Q5_0: 16, T.Q5_1: 16, T.Q8_0: 16, T.Q4_K: 6, T.Q5_K: 6, T.Q6_K: 6}
N_FLOAT = 512
HAS_QUANTIZER = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}


def finite_halves(rng, n):
    """Random fp16 bit patterns with the exponent kept below 31 (no inf/NaN)."""
    h = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    bad = (h & 0x7C00) == 0x7C00
    h[bad] &= np.uint16(0xBFFF)  # clear the top exponent bit: now finite
    return h


def quant_blocks(rng, qtype):
    nb = N_BLOCKS[qtype]
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(nb, block_bytes), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        raw[:, off:off + 2] = finite_halves(rng, nb).view(np.uint8).reshape(nb, 2)
    if qtype in HAS_QUANTIZER:
        half = nb // 2
        data = (rng.standard_normal((half, block_elems)) * rng.uniform(0.01, 3.0, (half, 1))).astype(np.float32)
        raw[:half] = quants.quantize(data, qtype).reshape(half, block_bytes)
    return raw


def float_elems(rng, qtype):
    if qtype == T.F32:
        bits = rng.integers(0, 1 << 32, size=N_FLOAT, dtype=np.uint32)
        specials = [0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001]
        bits[:len(specials)] = specials
        return bits.view(np.uint8).reshape(N_FLOAT, 4)
    bits = rng.integers(0, 1 << 16, size=N_FLOAT, dtype=np.uint16)
    if qtype == T.F16:
        specials = [0x0000, 0x8000, 0x0001, 0x83FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF]
    else:  # BF16
        specials = [0x0000, 0x8000, 0x0001, 0x807F, 0x0080, 0x7F7F, 0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFFF]
    bits[:len(specials)] = specials
    return bits.view(np.uint8).reshape(N_FLOAT, 2)


def main():
    rng = np.random.default_rng(SEED)
    os.makedirs(OUT, exist_ok=True)
    total = 0
    for qtype in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]:
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        raw = float_elems(rng, qtype) if qtype in (T.F32, T.F16, T.BF16) else quant_blocks(rng, qtype)
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        expected = np.asarray(quants.dequantize(raw.reshape(-1), qtype), dtype=np.float32).reshape(-1)
        nb = raw.shape[0]
        assert expected.size == nb * block_elems, (qtype.name, expected.size)
        blob = struct.pack("<4s5I", b"SPDQ", 1, qtype.value, nb, block_elems, block_bytes)
        blob += raw.tobytes() + expected.astype("<f4").tobytes()
        path = os.path.join(OUT, f"{qtype.name}.bin")
        with open(path, "wb") as f:
            f.write(blob)
        total += len(blob)
        print(f"{path}: {nb} blocks, {len(blob)} bytes, {int(np.isnan(expected).sum())} NaN")
    print(f"total {total} bytes")
    model_rows()


MODEL_ROWS = [  # (tensor, row): both linear types, first/last rows, the embedding's last token, a norm
    ("token_embd.weight", 0), ("token_embd.weight", 49151), ("blk.0.attn_q.weight", 0),
    ("blk.0.attn_q.weight", 575), ("blk.29.ffn_down.weight", 300), ("blk.13.attn_k.weight", 191),
    ("output_norm.weight", 0), ("blk.7.ffn_norm.weight", 0),
]


def model_rows():
    from gguf import GGUFReader
    path = os.environ.get("SPINDLE_MODEL") or os.path.expanduser(
        "~/.cache/spindle/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        print(f"{path}: not found, model_rows.bin not regenerated")
        return
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    blob = struct.pack("<4s2I", b"SPMR", 1, len(MODEL_ROWS))
    for name, row in MODEL_ROWS:
        t = tensors[name]
        data = np.asarray(t.data)  # rows of raw bytes (quantized) or values (F32), outermost first
        if data.ndim == 1:
            data = data.reshape(1, -1)
        vals = np.asarray(quants.dequantize(np.ascontiguousarray(data[row]), t.tensor_type), dtype=np.float32).reshape(-1)
        blob += struct.pack("<I", len(name)) + name.encode() + struct.pack("<IQI", t.tensor_type.value, row, vals.size)
        blob += vals.astype("<f4").tobytes()
    out = os.path.join(OUT, "model_rows.bin")
    with open(out, "wb") as f:
        f.write(blob)
    print(f"{out}: {len(MODEL_ROWS)} rows, {len(blob)} bytes")


def fuzz_corpus(out):
    import tempfile
    from gguf import GGUFWriter, GGUFValueType as V

    rng = np.random.default_rng(SEED + 1)
    os.makedirs(out, exist_ok=True)

    def write(name, fill):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "x.gguf")
            w = GGUFWriter(path, "llama")
            fill(w)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            with open(path, "rb") as f:
                return f.read()

    def small_model(w):
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_embedding_length(64)
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_rope_freq_base(100000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_tokenizer_model("gpt2")
        w.add_token_list(["<s>", "a", "b", "ab", " "])
        w.add_token_types([3, 1, 1, 1, 1])
        w.add_token_merges(["a b"])
        w.add_bool("test.bool", True)
        w.add_int8("test.i8", -5)
        w.add_uint16("test.u16", 65535)
        w.add_int16("test.i16", -300)
        w.add_int64("test.i64", -(1 << 40))
        w.add_uint64("test.u64", 1 << 40)
        w.add_float64("test.f64", 0.25)
        w.add_array("test.f32s", [0.5, -4.0])
        w.add_array("test.nested", [[1, 2], ["x", "y"], [[3]]])
        w.add_tensor("token_embd.weight", quants.quantize(rng.standard_normal((5, 64)).astype(np.float32), T.Q8_0),
                     raw_dtype=T.Q8_0)
        w.add_tensor("blk.0.attn_q.weight", quants.quantize(rng.standard_normal((64, 64)).astype(np.float32)[:8],
                                                            T.Q4_1), raw_dtype=T.Q4_1)
        w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
        w.add_tensor("blk.0.ffn_up.weight", rng.standard_normal((2, 32)).astype(np.float16))
        w.add_tensor("blk.0.k6.weight", rng.integers(0, 256, (1, 210), dtype=np.uint8), raw_dtype=T.Q6_K)

    def aligned64(w):
        w.data_alignment = 64
        w.add_uint32("general.alignment", 64)
        w.add_string("general.name", "tiny")
        w.add_tensor("a", rng.standard_normal((3, 4)).astype(np.float32))
        w.add_tensor("b", rng.integers(0, 256, (1, 144), dtype=np.uint8), raw_dtype=T.Q4_K)
        w.add_tensor("c", rng.integers(0, 256, (2, 22), dtype=np.uint8), raw_dtype=T.Q5_0)

    seeds = {}
    full = write("full", small_model)
    seeds["valid_small_model.seed"] = full
    seeds["valid_align64.seed"] = write("a64", aligned64)
    v2 = bytearray(seeds["valid_align64.seed"])
    v2[4:8] = struct.pack("<I", 2)
    seeds["valid_v2.seed"] = bytes(v2)
    seeds["keys_only.seed"] = write("keys", lambda w: (w.add_string("general.name", "k"), w.add_uint32("x", 1)))
    seeds["truncated_in_tensor_table.seed"] = full[: full.index(b"blk.0.attn_q.weight") + 10]
    seeds["truncated_in_data.seed"] = full[: len(full) - 700]
    seeds["truncated_header.seed"] = full[:20]
    bad = bytearray(full)
    bad[16:24] = struct.pack("<Q", 1 << 40)  # absurd key count
    seeds["absurd_key_count.seed"] = bytes(bad)
    for name, data in seeds.items():
        assert len(data) <= 8192, (name, len(data))
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print(f"{out}/{name}: {len(data)} bytes")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--fuzz-corpus":
        fuzz_corpus(sys.argv[2])
    else:
        main()
