#!/usr/bin/env python3
"""Regenerate tests/fixtures/dequant/: raw ggml blocks + the fp32 values the `gguf` PyPI package's
own dequantizer (gguf.quants.dequantize) produces for them. tests/test_dequant.c checks that
cpu/dequant.c reproduces these values bit for bit, so the oracle is independent of our C code.

Usage:  python3 scripts/make_dequant_fixtures.py [OUT_DIR]     (default: tests/fixtures/dequant)
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
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "dequant")

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


if __name__ == "__main__":
    main()
