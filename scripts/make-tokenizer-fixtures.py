"""Generates the tokenizer test fixtures under tests/fixtures/tokenizers/.

  corpus.jsonl      the test corpus: one JSON string per line (>= 200 KB of UTF-8 text), built
                    deterministically (seeded) from the generators below: English, CJK, Arabic,
                    Hindi, emoji and ZWJ sequences, code, whitespace and digit runs, odd Unicode,
                    special-token text.
  special.jsonl     a small corpus of chat-like text with special-token text, encoded with
                    add_special_tokens=True and special tokens parsed.
  <name>/tokenizer.json   tokenizers trained here with the `tokenizers` library, one per
                    pre-tokenizer / normalizer family (see BUILT below).
  <name>.ids        expected ids of every corpus line (one line each, space-separated, in base 36
                    to keep the files small), from
                    Tokenizer.encode(text, add_special_tokens=False) with special-token text NOT
                    matched (encode_special_tokens = True).
  <name>.special.ids  expected ids of special.jsonl with add_special_tokens=True, specials matched.
  <name>.special.decoded.jsonl  [line, length, FNV-1a 64 hex, same for skip_special_tokens=True]
                    of the reference decode of those ids.
  <name>.decoded.jsonl  [line, byte length, FNV-1a 64 hex] of the reference decode for corpus
                    lines whose decode(encode(x)) != x (everything else must round-trip exactly).
  llama3-style.gguf the llama3-style tokenizer written as a GGUF vocabulary (model gpt2, pre
                    llama-bpe), which must give the llama3-style expected ids.
  manifest.json     the tokenizers and where their files are (fixture folder or ../shared).

Usage: QV_PYTHON=/path/to/python scripts/make-tokenizer-fixtures   (the bash wrapper; needs pip: tokenizers)
The shared data folder is $QV_SHARED_DIR or <repo>/../shared.
"""
import json
import os
import random
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers, Regex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("QV_SHARED_DIR") or os.path.join(ROOT, "..", "shared")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizers")

LLAMA3_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# ---------------------------------------------------------------------------------------------
# Corpus
WORDS = """the of and to in is was for that it with as on be at by this had not are but from or have
an they which one you were her all she there would their we him been has when who will more no if
out so said what up its about into than them can only other new some could time these two may then
do first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go
came right used take three states himself few house use during without again place american
around however home small found thought went say part once general high upon school every don't
does got united left number course war until always away something fact though water less public
put think almost hand enough far took head yet government system better set told nothing night
end why called didn't eyes find going look asked later knew point next program city business give
group toward young days let room president side social given present several order national
possible rather second face per among form important often things looked early white case john
become large big need four within felt children along saw best church ever least power development
light thing seemed family interest want members mind country area others although turned done
open god service problem certain kind different thus began door help sense means whole matter
perhaps itself york it's times law human line above name example action company hands local show
whether five history gave today either act feet across taken past quite anything seen having death
week experience I'll we've they're you'd she'll HE'S WON'T Don't""".split()

CJK = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多"
       "天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些"
       "与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东"
       "政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活"
       "難しい日本語のテキストです。ひらがなとカタカナ、漢字が混ざっています。東京都渋谷区でコーヒーを飲みました")
HANGUL = "안녕하세요 반갑습니다 한국어 텍스트입니다 서울특별시 대한민국 감사합니다 사랑해요 오늘 날씨가 좋네요"
ARABIC = ["مرحبا بالعالم", "السلام عليكم ورحمة الله وبركاته", "اللغة العربية جميلة جدا", "كيف حالك اليوم؟",
          "هذا نص تجريبي للاختبار", "مُحَمَّدٌ رَسُولُ اللَّهِ", "الرقم ١٢٣٤٥٦٧٨٩٠ عربي"]
HINDI = ["नमस्ते दुनिया", "हिन्दी भाषा बहुत सुंदर है", "भारत एक विशाल देश है।", "क्या हाल है? सब ठीक है।",
         "प्रधानमंत्री ने आज घोषणा की", "१२३४५ हिंदी अंक", "क्षत्रिय ज्ञान श्री"]
EMOJI = ["😀", "🎉", "🦙", "🚀", "❤️", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👩🏽‍💻", "🧑‍🤝‍🧑", "🇫🇷", "🇯🇵", "1️⃣", "#️⃣",
         "🤦🏼‍♂️", "👁️‍🗨️", "🐕‍🦺", "😶‍🌫️", "©", "™", "⚡", "🫠", "🪿"]
CODE = [
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "#include <stdio.h>\n\nint main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; i++) {\n\t\tprintf(\"%s\\n\", argv[i]);\n\t}\n\treturn 0;\n}\n",
    "const x = await fetch(`https://example.com/api?q=${encodeURIComponent(q)}&n=10`);\nif (x.status !== 200) throw new Error('bad');\n",
    "SELECT id, name, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id WHERE u.age >= 18 GROUP BY 1, 2;\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "    \n    \n\n\t\t  x = [1,2,3]  # trailing   \r\n",
    "<html><body class=\"main\"><p>Hello &amp; welcome!</p></body></html>\n",
    "{\"key\": [1, 2.5e-3, null, true], \"nested\": {\"a\": \"\\u00e9\"}}\n",
    "a+=1;b-=2;c*=3;d/=4;e%=5;f<<=6;g>>=7;h&&=i||j;k??=l;m->n;o::p;q...r;",
]
ODD = ["\u200b\u200c\u200d\ufeff", "e\u0301 vs \u00e9", "\u0301\u0302 lone marks", "\ufffd replacement",
       "\x01\x02\x03\x07\x1b[31mred\x1b[0m\x7f", "\u202eevil RTL\u202c", "\uffff\ufffe noncharacters",
       "\ue000\uf8ff private use", "<0x41><0xE4> not bytes", "▁▁metaspace▁text", "ĠĠbyte level Ġchars",
       "ﬁne ﬂow ｆｕｌｌｗｉｄｔｈ Ａ１ ² ³ ½ ℌ ㍿", "İstanbul ΣΊΣΥΦΟΣ ΟΔΟΣ σοφός ß ẞ", "\u1100\u1161\u11a8 jamo",
       "a\u00a0b\u2003c\u3000d\u0085e\u2028f\u2029g", "tab\tsep\vvert\fform", "'s 'S 'Re 'VE 'll 'D ' s '",
       "...!!!???---___***", "~`!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/", "\U0001d400\U0001d401 math bold \U00020000 ext-b",
       "call <tool_call>{\"name\": \"f\"}</tool_call> then   lstripped text and\tlstripped", "a word, words, sword word. _word word_",
       "Hello   there Hello\nHello"]
SPECIAL = ["<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
           "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "[INST]", "<pad>", "<|im_start", "</s"]


def sentence(rng):
    n = rng.randint(3, 25)
    ws = [rng.choice(WORDS) for _ in range(n)]
    if rng.random() < 0.5:
        ws[0] = ws[0].capitalize()
    if rng.random() < 0.3:
        ws.insert(rng.randint(0, len(ws)), str(rng.randint(0, 10 ** rng.randint(1, 9))))
    s = " ".join(ws)
    for _ in range(rng.randint(0, 3)):
        i = rng.randint(0, len(s))
        s = s[:i] + rng.choice([",", ";", ":", " -", "(", ")", "\"", "'"]) + s[i:]
    return s + rng.choice([".", "!", "?", "...", "", "\n"])


def segment(rng, kind):
    if kind == "english":
        return " ".join(sentence(rng) for _ in range(rng.randint(1, 6)))
    if kind == "cjk":
        k = rng.randint(5, 60)
        i = rng.randint(0, len(CJK) - k)
        s = CJK[i:i + k]
        if rng.random() < 0.4:
            s += "，" + rng.choice(HANGUL.split()) + "。"
        return s
    if kind == "arabic":
        return " ".join(rng.choice(ARABIC) for _ in range(rng.randint(1, 4)))
    if kind == "hindi":
        return " ".join(rng.choice(HINDI) for _ in range(rng.randint(1, 4)))
    if kind == "emoji":
        return "".join(rng.choice(EMOJI) + rng.choice(["", " ", "  ", "a", "!"]) for _ in range(rng.randint(1, 8)))
    if kind == "code":
        return rng.choice(CODE)
    if kind == "space":
        parts = [rng.choice([" ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "  ", "\n\n"]) * rng.randint(1, 40)
                 for _ in range(rng.randint(1, 4))]
        return rng.choice(WORDS).join(parts) + rng.choice(["", "x", " end"])
    if kind == "digits":
        return " ".join(rng.choice([str(rng.randint(0, 10 ** rng.randint(1, 40))), "3.14159265358979",
                                    "1,234,567.89", "0x7fff_ffff", "2024-01-31T23:59:59Z", "١٢٣", "१२३"])
                        for _ in range(rng.randint(1, 5)))
    if kind == "odd":
        return rng.choice(ODD) + rng.choice(["", " ", " tail"])
    if kind == "special":
        return rng.choice(SPECIAL) + rng.choice(["", " ", "user\n", "Hello"]) + rng.choice(SPECIAL) + " text " + rng.choice(SPECIAL)
    if kind == "mixed":
        return " ".join(segment(rng, k) for k in rng.sample(KINDS[:-1], 3))
    raise ValueError(kind)


KINDS = ["english", "cjk", "arabic", "hindi", "emoji", "code", "space", "digits", "odd", "special", "mixed"]
WEIGHTS = [30, 10, 6, 6, 6, 8, 6, 6, 6, 4, 12]


def make_corpus():
    rng = random.Random(20261126)
    lines, size = [], 0
    # Every fixed snippet once, then random segments up to the size target.
    for s in CODE + ODD + ARABIC + HINDI + SPECIAL + EMOJI + ["", " ", "  ", "\n", "Hello world", " Hello world"]:
        lines.append(s)
    while size < 215_000:
        s = segment(rng, rng.choices(KINDS, WEIGHTS)[0])
        lines.append(s)
        size += len(s.encode("utf-8"))
    return lines


def make_special(rng):
    out = []
    for i in range(20):
        who = rng.choice(["user", "assistant", "system"])
        out.append(f"<|im_start|>{who}\n{sentence(rng)}<|im_end|>\n<|im_start|>assistant\n")
        out.append(f"<|begin_of_text|><|start_header_id|>{who}<|end_header_id|>\n\n{sentence(rng)}<|eot_id|>")
        out.append(f"<s>[INST] {sentence(rng)} [/INST] {sentence(rng)}</s><s>[INST] hi [/INST]")
        out.append(f"{sentence(rng)}<|endoftext|>{sentence(rng)} <unk> </s>")
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizers built with the library: one per pre-tokenizer family and normalizer set.
SPECIALS_CHAT = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
                 "<|start_header_id|>", "<|end_header_id|>"]


def train(tok, texts, vocab_size, specials, byte_level=False, **kw):
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                             show_progress=False, **kw)
    tok.train_from_iterator(texts, trainer=tr)
    return tok


def built_tokenizers(texts):
    out = {}
    # Llama 3 style: Split(regex) + ByteLevel without regex, ignore_merges, BOS template.
    t = Tokenizer(models.BPE(ignore_merges=True))
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    train(t, texts, 2500, SPECIALS_CHAT, byte_level=True)
    bos = t.token_to_id("<|begin_of_text|>")
    t.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    out["llama3-style"] = t
    # Qwen2 style: NFC + Split(regex) + ByteLevel; no BOS.
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    train(t, texts, 2000, SPECIALS_CHAT, byte_level=True)
    out["qwen2-style"] = t
    # GPT-2 / RoBERTa style: ByteLevel with its own regex and a prefix space.
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    t.decoder = decoders.ByteLevel()
    train(t, texts, 2000, ["<|endoftext|>"], byte_level=True)
    out["gpt2-prefix"] = t
    # Mistral/Gemma style: Metaspace(prepend first, no split) + byte fallback, SentencePiece decoder.
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    train(t, texts, 3000, ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)], limit_alphabet=300)
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", t.token_to_id("<s>"))])
    out["metaspace-first"] = t
    # Metaspace(always, split) with the Metaspace decoder, NFKC + Strip + Replace normalizers.
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Strip(left=False, right=True),
                                         normalizers.Replace(Regex(r"\d{4,}"), "#")])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    train(t, texts, 2500, ["<unk>", "<s>", "</s>"], limit_alphabet=400)
    out["metaspace-split"] = t
    # Metaspace(never, split) with a BPE decoder-free pipeline: tokens joined with spaces.
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="_", prepend_scheme="never", split=True)
    t.decoder = decoders.Metaspace(replacement="_", prepend_scheme="never", split=True)
    train(t, texts, 1500, ["<unk>", "<s>"], limit_alphabet=300)
    out["metaspace-never"] = t
    # BERT-like BPE: Lowercase + NFD... (Whitespace, Digits, Punctuation), no decoder.
    t = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.Punctuation()])
    train(t, texts, 2500, ["[UNK]", "[CLS]", "[SEP]"], limit_alphabet=500, continuing_subword_prefix="##")
    out["whitespace-digits-punct"] = t
    # Split behaviours: WhitespaceSplit, Digits(contiguous), Split string/regex with each behaviour.
    t = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("^"), normalizers.Replace("-", " - ")])
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(",", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[.!?]+"), behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"\p{Lu}"), behavior="contiguous"),
        pre_tokenizers.Split(Regex(r"[()\[\]{}]"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"[^\p{Han}]+"), behavior="isolated", invert=True),
        pre_tokenizers.Punctuation(behavior="merged_with_next")])
    t.decoder = decoders.Sequence([decoders.Replace("</w>", " "), decoders.Strip(" ", 0, 1)])
    train(t, texts, 2500, ["<unk>"], limit_alphabet=500, end_of_word_suffix="</w>")
    out["split-behaviors"] = t
    return out


def add_added_tokens(name, tok):
    """Added tokens with the flag combinations the reference supports."""
    from tokenizers import AddedToken
    if name == "qwen2-style":
        tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                        AddedToken(" lstripped", lstrip=True, special=False, normalized=False),
                        AddedToken("word", single_word=True, special=False, normalized=False)])
    if name == "gpt2-prefix":
        tok.add_tokens([AddedToken("Hello", rstrip=True, special=False, normalized=True)])


def b36(n):
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = digits[r] + s
        if n == 0:
            return s


def fnv64(b):
    h = 0xcbf29ce484222325
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def write_gguf(path, tok_json_path, pre):
    """A vocab-only GGUF v3 holding the tokenizer.json's BPE vocabulary, merges and specials."""
    import struct
    with open(tok_json_path, encoding="utf-8") as f:
        j = json.load(f)
    vocab = dict(j["model"]["vocab"])
    special_ids = set()
    for t in j["added_tokens"]:
        vocab[t["content"]] = t["id"]
        if t["special"]:
            special_ids.add(t["id"])
    n = max(vocab.values()) + 1
    tokens = [""] * n
    for k, v in vocab.items():
        tokens[v] = k
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    bos = j["post_processor"]["processors"][1]["special_tokens"]["<|begin_of_text|>"]["ids"][0]

    def s(x):
        b = x.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    kvs = [("tokenizer.ggml.model", 8, s("gpt2")), ("tokenizer.ggml.pre", 8, s(pre)),
           ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, n) + b"".join(s(t) for t in tokens)),
           ("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, n) + b"".join(
               struct.pack("<i", 3 if i in special_ids else 1) for i in range(n))),
           ("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, len(merges)) + b"".join(s(m) for m in merges)),
           ("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", bos)),
           ("tokenizer.ggml.add_bos_token", 7, struct.pack("<B", 1))]
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs))
    for key, typ, val in kvs:
        out += s(key) + struct.pack("<I", typ) + val
    with open(path, "wb") as f:
        f.write(out)


def main():
    os.makedirs(OUT, exist_ok=True)
    corpus = make_corpus()
    special = make_special(random.Random(7))
    with open(os.path.join(OUT, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for s in corpus:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "special.jsonl"), "w", encoding="utf-8") as f:
        for s in special:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    train_texts = corpus[::2]
    toks = {}
    manifest = []
    for name, tok in built_tokenizers(train_texts).items():
        add_added_tokens(name, tok)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
        toks[name] = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        manifest.append({"name": name, "path": f"fixtures:{name}/tokenizer.json"})
    # Real tokenizers from the shared folder. The Llama 2 export holds merges whose tokens contain
    # spaces ("a b c"), which the library refuses; quiver takes the single split whose parts are
    # in the vocabulary, and so does this script before handing the file to the library.
    for name, rel in [("llama2", "data/tokenizers/llama2.tokenizer.json"),
                      ("phi-2", "data/tokenizers/phi-2.tokenizer.json"),
                      ("stories260K", "models/stories260K/tokenizer.json")]:
        with open(os.path.join(SHARED, rel), encoding="utf-8") as f:
            j = json.load(f)
        vocab, merges = j["model"]["vocab"], j["model"]["merges"]
        fixed = []
        for m in merges:
            if isinstance(m, str):
                cuts = [i for i, c in enumerate(m) if c == " " and m[:i] in vocab and m[i + 1:] in vocab]
                if len(cuts) != 1:
                    raise SystemExit(f"{name}: ambiguous merge {m!r}")
                fixed.append([m[:cuts[0]], m[cuts[0] + 1:]])
            else:
                fixed.append(m)
        j["model"]["merges"] = fixed
        toks[name] = Tokenizer.from_str(json.dumps(j))
        path = "shared:" + (os.path.dirname(rel) if name == "stories260K" else rel)
        manifest.append({"name": name, "path": path})
    write_gguf(os.path.join(OUT, "llama3-style.gguf"), os.path.join(OUT, "llama3-style", "tokenizer.json"), "llama-bpe")
    manifest.append({"name": "llama3-style-gguf", "path": "fixtures:llama3-style.gguf", "expect": "llama3-style"})
    for name, tok in toks.items():
        tok.encode_special_tokens = True
        encs = tok.encode_batch(corpus, add_special_tokens=False)
        with open(os.path.join(OUT, f"{name}.ids"), "w") as f:
            for e in encs:
                f.write(" ".join(map(b36, e.ids)) + "\n")
        with open(os.path.join(OUT, f"{name}.decoded.jsonl"), "w", encoding="utf-8") as f:
            for i, (s, e) in enumerate(zip(corpus, encs)):
                d = tok.decode(e.ids, skip_special_tokens=False)
                if d != s:
                    b = d.encode("utf-8")
                    f.write(json.dumps([i, len(b), fnv64(b)]) + "\n")
        tok.encode_special_tokens = False
        encs = tok.encode_batch(special, add_special_tokens=True)
        with open(os.path.join(OUT, f"{name}.special.ids"), "w") as f:
            for e in encs:
                f.write(" ".join(map(b36, e.ids)) + "\n")
        with open(os.path.join(OUT, f"{name}.special.decoded.jsonl"), "w") as f:
            for i, e in enumerate(encs):
                a = tok.decode(e.ids, skip_special_tokens=False).encode("utf-8")
                b = tok.decode(e.ids, skip_special_tokens=True).encode("utf-8")
                f.write(json.dumps([i, len(a), fnv64(a), len(b), fnv64(b)]) + "\n")
        n_ids = sum(len(e.ids) for e in encs)
        print(f"{name}: ok ({n_ids} special-mode ids)", file=sys.stderr)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"corpus": "corpus.jsonl", "special": "special.jsonl", "tokenizers": manifest}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
