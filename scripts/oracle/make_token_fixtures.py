#!/usr/bin/env python3
"""Tokenizer fixtures for spindle, produced by llama.cpp (through llama-cpp-python).

Writes tests/fixtures/tokenizer/{smollm,llama-bpe,qwen2}.tsv. Each is the same deterministic
corpus (>= 220 cases) tokenized by llama.cpp with the default model's vocabulary and merges; the
three files differ only in the pre-tokenizer regex that `tokenizer.ggml.pre` selects. For
llama-bpe and qwen2 a temporary copy of the model GGUF with only that key changed (and the tensors
dropped: vocab_only loading does not read them) is written under /root/.cache/spindle/, never into
the repository.

File format (one case per line, TAB-separated; '#' lines are comments):
  hex  <TAB> <utf-8 text as lowercase hex> <TAB> <space-separated ids>   add_bos=False, special=False
  hexs <TAB> <hex> <TAB> <ids>                                           add_bos=False, special=True
  ref  <TAB> <file relative to shared/data/haystack/> <TAB> <byte offset> <TAB> <byte length> <TAB> <ids>
                                                                         add_bos=False, special=False
Essay text is referenced by offset/length because the project must not copy it.
Offsets and lengths always fall on UTF-8 character boundaries.

Run with the oracle venv: /root/.cache/spindle/oracle-venv/bin/python scripts/oracle/make_token_fixtures.py
"""
import argparse
import os
import random
import sys

import gguf
import llama_cpp
from llama_cpp import Llama

CACHE = "/root/.cache/spindle"
DEFAULT_MODEL = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
HAYSTACK = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "haystack"))
PRES = ["smollm", "llama-bpe", "qwen2"]


# ----------------------------------------------------------------------------- corpus
def inline_cases():
    """Hand-written and generated strings; order is fixed so the fixture is deterministic."""
    c = []
    # --- source code
    c += [
        "#include <stdio.h>\n\nint main(void) {\n    printf(\"hello, world\\n\");\n    return 0;\n}\n",
        "static inline uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }",
        "for (size_t i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}",
        "#define SP_MAX(a, b) ((a) > (b) ? (a) : (b))\n",
        "struct sp_tensor {\n    int64_t ne[4];   /* elements per dim */\n    void *data;\n};",
        "if (rc < 0) goto cleanup_fd;\n\t\t\t/* fall through */",
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
        "import numpy as np\nx = np.arange(10, dtype=np.float32).reshape(2, 5)\nprint(x.T @ x)",
        "class Foo(Bar):\n    \"\"\"Docstring.\"\"\"\n\n    def __init__(self, *args, **kwargs):\n        super().__init__(*args, **kwargs)\n",
        "    # indented comment with trailing spaces   \n",
        "lambda x: x**2 if x >= 0 else -x//3",
        "{\"name\": \"spindle\", \"version\": \"0.1.0\", \"layers\": [1, 2, 3], \"ok\": true, \"x\": null}",
        "{\n  \"a\": {\n    \"b\": [\n      1.5e-3,\n      -2\n    ]\n  }\n}\n",
        "[{\"id\":1,\"tags\":[\"a\",\"b\"]},{\"id\":2,\"tags\":[]}]",
        "#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do wc -l \"$f\"; done | sort -n | tail -3\n",
        "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2",
        "grep -rn 'TODO' src/ | awk -F: '{print $1}' | uniq -c > /tmp/todo.txt 2>&1",
        "export PATH=\"$HOME/.local/bin:$PATH\"; echo ${PATH%%:*}",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
        "<div class=\"row\"><a href=\"/x?y=1&amp;z=2\">link</a></div>",
        "fn main() { let v: Vec<i32> = (0..10).map(|x| x * x).collect(); println!(\"{:?}\", v); }",
        "a=b;c=d;e==f;g!=h;i<=j;k>=l;m&&n||o;p->q;r::s;t...u",
    ]
    # --- numbers and digit runs
    c += ["1", "12", "123", "1234", "12345", "123456789", "1234567890123456789012",
          "3.14159", "-0.5", "1e-10", "6.022e23", "1,000,000", "1.000.000,50", "$1,299.99",
          "100%", "50/50", "2024-01-15", "15/01/2024", "Jan 15, 2024 at 10:30:45 PM",
          "2024-01-15T10:30:45.123Z", "+1 (555) 123-4567", "+44 20 7946 0958", "555.123.4567",
          "0xDEADBEEF", "0x1f", "#ff8800", "0b1010_0101", "v1.2.3-rc.4", "192.168.0.1:8080",
          "ISBN 978-3-16-148410-0", "a1b2c3d4", "abc123def456", "x86_64", "3rd 21st 102nd",
          "1st place, 2nd place and 3rd place",
          "In 1969, 3 astronauts flew 384400 km.", "0001", "000000000", "9" * 40,
          "1 2 3 4 5 6 7 8 9 10", "١٢٣٤٥ ۱۲۳", "一二三 123 ４５６", "½ ¾ ⅓ ² ³"]
    # --- whitespace
    c += [" ", "  ", "   ", "    ", " " * 17, "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n",
          " hello", "  hello", "hello ", "hello  ", "hello\n", "\nhello", " \n hello \n ",
          "hello world", "hello  world", "hello   world", "hello\tworld", "hello\nworld",
          "hello\r\nworld", "hello \n\n world", "a \t b\t \tc", "line1\n\n\n\nline2",
          "  \n\t  \r\n  x", "trailing tabs\t\t\t", "\u00a0nbsp\u00a0space", "thin\u2009space\u3000ideo",
          "    def f():\n        pass\n\n\n", "x\n \n \ny", "\n\n\n\n\n\n\n\n"]
    # --- scripts and languages
    c += ["你好，世界！", "我爱自然语言处理。今天天气很好。", "中文English混合text测试",
          "日本語のテキストです。", "ひらがな カタカナ ｶﾀｶﾅ", "東京は日本の首都です。",
          "안녕하세요, 세계!", "한국어 텍스트 처리", "مرحبا بالعالم", "اللغة العربية جميلة جداً",
          "नमस्ते दुनिया", "हिन्दी में लिखा गया वाक्य।", "Привет, мир! Как дела?",
          "Ελληνικά γράμματα αβγ", "שלום עולם", "ภาษาไทยสวัสดี", "Tiếng Việt có dấu",
          "Türkçe ıİ ğĞ şŞ", "ქართული ენა"]
    # --- emoji
    c += ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇯🇵🇩🇪", "❤️", "I ❤️ NY 🗽!", "🤖🤖🤖",
          "emoji😀in😀text", "👩🏻‍💻 coding", "✅ done ❌ failed ⚠️ warn"]
    # --- accents and combining marks
    c += ["café naïve résumé", "Crème brûlée à la française", "Ångström Øresund Æsir",
          "straße Straße STRASSE", "cafe\u0301 (combining acute)", "n\u0303 a\u0308 o\u0302",
          "Z\u0351\u0358a\u0341\u0362l\u0315g\u0360o\u0321", "ﬁ ﬂ ﬀ ligatures", "Ｆｕｌｌｗｉｄｔｈ",
          "\u200bzero\u200bwidth\u200b", "e\u0301e\u0301e\u0301", "ǅ ǈ ǋ titlecase", "ı I i İ"]
    # --- contractions
    c += ["it's", "don't", "we're", "you'll", "I've", "she'd", "I'm", "IT'S", "DON'T", "WE'RE",
          "YOU'LL", "I'VE", "SHE'D", "I'M", "It'S", "Don'T", "rock 'n' roll", "the dog's bone",
          "the dogs' bones", "'quoted'", "''double''", "can't won't shan't", "y'all'd've",
          "O'Neil's", "it’s curly", "he said 'hi' and left"]
    # --- punctuation runs
    c += ["!!!", "???", "...", "!?!?", "---", "—", "–", "...!?", "!!!...???",
          "(((nested)))", "[[[x]]]", "{{{y}}}", "<<<>>>", "*****", "#####", "=====", "~~~",
          "@@@@", "$$$$", "%%%%", "^^^^", "&&&&", "||||", "\\\\\\\\", "////", "''''", "\"\"\"\"",
          "``code``", ";;;:::", ",,,,,", "a, b; c: d. e! f? g", "«guillemets» „quotes“ ‘single’",
          "•·…‰′″", "→ ← ↑ ↓ ⇒ ∀x∈ℝ: x² ≥ 0", "©®™§¶†‡"]
    # --- URLs, emails, markdown
    c += ["https://example.com/path/to/page?query=1&b=two#frag",
          "http://www.gutenberg.org/ebooks/1342.txt.utf-8",
          "git@github.com:user/repo.git", "user.name+tag@example.co.uk", "ftp://a.b/c_d-e~f",
          "See https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct for details.",
          "# Title\n\n## Subtitle\n\nSome **bold** and *italic* and `code`.\n",
          "- item one\n- item two\n  - nested\n1. first\n2. second\n",
          "| a | b |\n|---|---|\n| 1 | 2 |\n",
          "```python\nprint('hi')\n```\n", "> quote\n> more\n\n---\n",
          "[link text](https://example.com \"title\") ![img](a.png)",
          "<|im_start|>user\nhi<|im_end|>"]  # special=False: the markers are plain text here
    # --- mixed / misc
    c += ["Hello", "hello", "HELLO", "hElLo", " Hello", "Hello, World!", "The quick brown fox jumps over the lazy dog.",
          "THE QUICK BROWN FOX", "supercalifragilisticexpialidocious", "antidisestablishmentarianism",
          "pneumonoultramicroscopicsilicovolcanoconiosis", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
          "abababababababababababab", "CamelCaseIdentifierName", "snake_case_identifier_name",
          "kebab-case-identifier", "SCREAMING_SNAKE_CASE", "e.g. i.e. etc. vs. Mr. Dr.",
          "A.B.C.D.", "U.S.A.", "x", "X", "a", "I", "Q&A", "R&D", "AT&T", "C++ C# F#",
          "<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<repo_name>",
          "\x00\x01\x7f", "tab\tsep\tvalues\n1\t2\t3\n"]
    return c


def special_cases():
    """Strings tokenized with special-token parsing on (the 'hexs' lines)."""
    return [
        "<|im_start|>user\nhi<|im_end|>",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>assistant\nParis.<|im_end|><|endoftext|>",
        "<|endoftext|>",
        "<|im_start|><|im_end|>",
        "abc<|im_end|>def",
        " <|im_start|> spaced <|im_end|> ",
        "<|im_start|>user\n\n\n  hi  \n<|im_end|>\n",
        "no special tokens here, just text",
        "<|im_start|>user\n你好 😀<|im_end|>",
        "<|im_start|incomplete marker|>",
        "<|endoftext|><|endoftext|>",
    ]


def snap(data, pos):
    """Move pos back onto a UTF-8 character boundary."""
    while 0 < pos < len(data) and (data[pos] & 0xC0) == 0x80:
        pos -= 1
    return pos


def ref_cases(rng):
    """(relpath, offset, length) slices of the essays: short/medium/long, mid-word, whole lines."""
    files = sorted(f for f in os.listdir(os.path.join(HAYSTACK, "pg_essays")) if f.endswith(".txt"))
    blobs = {f: open(os.path.join(HAYSTACK, "pg_essays", f), "rb").read() for f in files}
    out = []

    def add(f, off, ln):
        data = blobs[f]
        off = snap(data, min(off, len(data) - 1))
        end = snap(data, min(off + ln, len(data)))
        if end > off:
            out.append(("pg_essays/" + f, off, end - off))

    for f in files[:6]:                    # file openings
        add(f, 0, rng.randint(60, 300))
    def pick(need):
        f = rng.choice([g for g in files if len(blobs[g]) > need])
        return f, rng.randrange(len(blobs[f]) - need)

    for _ in range(40):                    # short, arbitrary cuts (mostly mid-word / mid-line)
        f, off = pick(400)
        add(f, off, rng.randint(8, 200))
    for _ in range(14):                    # medium
        f, off = pick(1200)
        add(f, off, rng.randint(400, 1100))
    for _ in range(8):                     # long, 2-4 KB
        f, off = pick(4200)
        add(f, off, rng.randint(2048, 4096))
    for _ in range(8):                     # whole lines/paragraphs (start and end at '\n')
        f = rng.choice(files)
        data = blobs[f]
        a = data.find(b"\n", rng.randrange(len(data) // 2)) + 1
        b = data.find(b"\n", a + rng.randint(50, 600))
        if a > 0 and b > a:
            add(f, a, b - a + 1)
    for f in files[-4:]:                   # file endings
        add(f, len(blobs[f]) - 150, 150)
    return out, blobs


# ----------------------------------------------------------------------------- oracle
def model_with_pre(src, pre):
    """Path of a vocab-only GGUF identical to src except tokenizer.ggml.pre (cached)."""
    if pre == "smollm":
        return src
    dst = os.path.join(CACHE, "oracle-vocab-%s.gguf" % pre)
    if os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(src):
        return dst
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst + ".tmp", arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        val = pre if name == "tokenizer.ggml.pre" else f.contents()
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, val, f.types[0], sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(dst + ".tmp", dst)
    chk = gguf.GGUFReader(dst)
    assert chk.fields["tokenizer.ggml.pre"].contents() == pre
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert chk.fields[key].contents() == r.fields[key].contents(), key
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "tokenizer"))
    ap.add_argument("--pre", nargs="*", default=PRES)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    texts = inline_cases()
    specials = special_cases()
    refs, blobs = ref_cases(random.Random(20240515))
    assert len(set(texts)) == len(texts), "duplicate inline case"
    n = len(texts) + len(specials) + len(refs)
    assert n >= 220, n

    for pre in args.pre:
        path = model_with_pre(args.model, pre)
        llm = Llama(model_path=path, vocab_only=True, verbose=False)
        lines = [
            "# spindle tokenizer fixture: tokenizer.ggml.pre=%s, vocab/merges of %s" % (pre, os.path.basename(args.model)),
            "# ids by llama.cpp (llama-cpp-python %s, vendored llama.cpp): Llama(model, vocab_only=True).tokenize(bytes, add_bos=False, special=...)"
            % llama_cpp.__version__,
            "# generated by: scripts/oracle/make_token_fixtures.py (see scripts/oracle/make_all.sh)",
            "# hex<TAB>utf8-hex<TAB>ids (special=False) | hexs<TAB>utf8-hex<TAB>ids (special=True) | "
            "ref<TAB>file under shared/data/haystack<TAB>byte offset<TAB>byte length<TAB>ids (special=False)",
            "# %d cases" % n,
        ]
        for t in texts:
            b = t.encode("utf-8")
            ids = llm.tokenize(b, add_bos=False, special=False)
            lines.append("hex\t%s\t%s" % (b.hex(), " ".join(map(str, ids))))
        for t in specials:
            b = t.encode("utf-8")
            ids = llm.tokenize(b, add_bos=False, special=True)
            lines.append("hexs\t%s\t%s" % (b.hex(), " ".join(map(str, ids))))
        for rel, off, ln in refs:
            b = blobs[rel.split("/", 1)[1]][off:off + ln]
            ids = llm.tokenize(b, add_bos=False, special=False)
            lines.append("ref\t%s\t%d\t%d\t%s" % (rel, off, ln, " ".join(map(str, ids))))
        dst = os.path.join(args.out, pre + ".tsv")
        with open(dst, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print("%s: %d cases -> %s" % (pre, n, dst))
        del llm


if __name__ == "__main__":
    sys.exit(main())
