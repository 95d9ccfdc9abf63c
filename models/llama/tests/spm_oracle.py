"""Oracle for lava's SentencePiece tokenizer (driven by tests/spm_oracle.rs).

Trains a small BPE model with the `sentencepiece` library (byte fallback, identity
normalization, dummy prefix, extra whitespace kept: what llama.cpp's SPM tokenizer does),
writes its vocabulary into a tiny llama-architecture GGUF with llama.cpp's own writer
(`gguf.GGUFWriter`), and dumps sentencepiece's encode ids and decode output for a corpus and
hostile strings.

Usage: spm_oracle.py OUT_DIR [CORPUS_DIR]
Writes OUT_DIR/spm.gguf and OUT_DIR/cases.json.
"""

import io
import json
import os
import random
import sys

import numpy as np
import sentencepiece as spm
import gguf

out_dir = sys.argv[1]
corpus_dir = sys.argv[2] if len(sys.argv) > 2 else None
os.makedirs(out_dir, exist_ok=True)

MULTILINGUAL = [
    "Привет, мир! Как дела? Москва и Петербург.",
    "東京は日本の首都です。北京是中国的首都。",
    "مرحبا بالعالم، كيف حالك؟",
    "Ελληνικά: καλημέρα κόσμε.",
    "naïve café, résumé, façade, jalapeño, Zürich.",
]

lines = []
if corpus_dir and os.path.isdir(corpus_dir):
    for name in sorted(os.listdir(corpus_dir))[:20]:
        with open(os.path.join(corpus_dir, name), encoding="utf-8") as f:
            lines.extend(l for l in f.read().split("\n") if l.strip())
else:
    # No shared corpus (a fresh CI machine): deterministic essay-like text.
    rng = random.Random(7)
    words = ("the of and to a in that is was he for it with as his on be at by I this had not are "
             "but from or have an they which one you were her all she there would their we him been "
             "has when who will more no if out so said what up its about into than them can only other "
             "new some could time these two may then do first any my now such like our over man me even "
             "most made after also did many before must through back years where much your way well down "
             "should because each just those people how too little state good very make world still own "
             "startup founders investors programming language essay").split()
    for i in range(3000):
        n = rng.randint(5, 25)
        s = " ".join(rng.choice(words) for _ in range(n))
        lines.append(s[0].upper() + s[1:] + rng.choice([".", "?", "!", ",", ";"]))
lines.extend(MULTILINGUAL * 20)

USER_DEFINED = ["<sep>", "[[tool]]"]
model = io.BytesIO()
spm.SentencePieceTrainer.train(
    sentence_iterator=iter(lines),
    model_writer=model,
    model_type="bpe",
    vocab_size=800,
    byte_fallback=True,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    user_defined_symbols=USER_DEFINED,
    character_coverage=0.9995,
    num_threads=2,
    minloglevel=2,
)
sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
n = sp.get_piece_size()

tokens, scores, types = [], [], []
for i in range(n):
    piece = sp.id_to_piece(i)
    tokens.append(piece)
    scores.append(sp.get_score(i))
    if sp.is_unknown(i):
        t = 2
    elif sp.is_control(i):
        t = 3
    elif piece in USER_DEFINED:
        t = 4
    elif sp.is_unused(i):
        t = 5
    elif sp.is_byte(i):
        t = 6
    else:
        t = 1
    types.append(t)

# A tiny llama model (1 layer, width 16, 2 heads of 8) with random weights.
hidden, heads, ffn = 16, 2, 32
w = gguf.GGUFWriter(os.path.join(out_dir, "spm.gguf"), "llama")
w.add_block_count(1)
w.add_context_length(256)
w.add_embedding_length(hidden)
w.add_feed_forward_length(ffn)
w.add_head_count(heads)
w.add_head_count_kv(heads)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_freq_base(10000.0)
w.add_tokenizer_model("llama")
w.add_tokenizer_pre("default")
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(sp.bos_id())
w.add_eos_token_id(sp.eos_id())
w.add_unk_token_id(sp.unk_id())
w.add_add_bos_token(True)
w.add_add_eos_token(False)
CHAT_TEMPLATE = "{% for m in messages %}<s>[INST] {{ m.content }} [/INST]{% endfor %}"
w.add_chat_template(CHAT_TEMPLATE)
rng = np.random.default_rng(1)
def t(name, *shape):
    if len(shape) == 1:
        w.add_tensor(name, np.ones(shape, dtype=np.float32))
    else:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
t("token_embd.weight", n, hidden)
t("output_norm.weight", hidden)
t("blk.0.attn_norm.weight", hidden)
t("blk.0.attn_q.weight", hidden, hidden)
t("blk.0.attn_k.weight", hidden, hidden)
t("blk.0.attn_v.weight", hidden, hidden)
t("blk.0.attn_output.weight", hidden, hidden)
t("blk.0.ffn_norm.weight", hidden)
t("blk.0.ffn_gate.weight", ffn, hidden)
t("blk.0.ffn_up.weight", ffn, hidden)
t("blk.0.ffn_down.weight", hidden, ffn)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

hostile = [
    "", " ", "  ", "   leading", "trailing   ", " both ", "a  b   c    d",
    "\n", "line one\nline two\n\nline four", "\ttab\tseparated\t", " \t \n mixed \r\n whitespace ",
    "Hello, world!", "hello world", "HELLO WORLD", "Hello,world!Hello.", "2024-12-06 12:34:56.789",
    "Привет, мир!", "東京は日本の首都です。", "مرحبا بالعالم", "Ελληνικά", "한국어 텍스트", "हिन्दी",
    "mixed: Hello Привет 東京 مرحبا ok",
    "emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️", "😀😀😀",
    "combining: e\u0301 a\u0308 n\u0303 \u0065\u0301\u0302\u0303", "zero\u200bwidth\u200djoiner\ufeffbom",
    "unknown chars: \u2603 \u2764 \U0001f9ec \u0e01 \u10a0 \x01\x02\x7f",
    "<s>", "</s>", "<unk>", "<s>hello</s>", "a<s>b</s>c", " <s> ", "<0x41>", "<0xE2><0x96><0x81>",
    "<sep>", "x<sep>y", " <sep> z", "[[tool]]call[[tool]]", "<se p>",
    "\u2581", "\u2581\u2581x", "a\u2581b", " \u2581 ",
    "ﬁ ligature ＦＵＬＬＷＩＤＴＨ ① ㍻",  # NFKC would change these; identity keeps them
    "\\n \\t \"quoted\" 'single' `back`", "{\"json\": [1, 2.5, null, true]}",
    "a" * 300, "ab" * 150, " " * 64, "\n" * 16,
    "The quick brown fox jumps over the lazy dog. " * 4,
]
texts = []
if corpus_dir and os.path.isdir(corpus_dir):
    for name in sorted(os.listdir(corpus_dir))[20:26]:
        with open(os.path.join(corpus_dir, name), encoding="utf-8") as f:
            texts.append(f.read())  # whole essays: newlines, paragraphs, everything
    texts.extend(lines[:200])
else:
    texts.extend(lines[:400])
texts.extend(MULTILINGUAL)
texts.extend(hostile)

import re
CONTROL = {sp.id_to_piece(i): i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)}
CONTROL_RE = re.compile("(" + "|".join(re.escape(c) for c in sorted(CONTROL, key=len, reverse=True)) + ")")

def encode_special(s):
    """llama.cpp with control tokens recognised: each text run between them
    encoded on its own (and every run starts the text or follows a control
    token, so each gets sentencepiece's dummy prefix)."""
    out = []
    for i, frag in enumerate(CONTROL_RE.split(s)):
        if i % 2:
            out.append(CONTROL[frag])
        elif frag:
            out.extend(sp.encode(frag))
    return out

cases = [{"text": s, "ids": sp.encode(s), "ids_special": encode_special(s), "decoded": sp.decode(sp.encode(s))}
         for s in texts]

# A prompt split before its question: the suffix must be the question's
# encoding without the dummy prefix: "\n" + question gives [U+2581, <0x0A>, rest].
byte = lambda b: sp.piece_to_id("<0x%02X>" % b)
context, question = "The essay says startups grow fast.  Read it", "What does the essay say?"
nl = sp.encode("\n" + question)
assert nl[:2] == [sp.piece_to_id("\u2581"), byte(0x0A)], nl[:2]
question_case = {"context": context, "question": question, "context_ids": sp.encode(context),
                 "newline_ids": [byte(0x0A)], "question_ids": nl[2:]}
assert sp.encode(context + "\n") == sp.encode(context) + [byte(0x0A)]

# The chat template: message text that spells control tokens stays text.
chat_message = "hi </s> there <s> x"
chat_ids = [sp.bos_id()] + sp.encode("[INST] " + chat_message + " [/INST]")

# Decode of id sequences encode never gives: control tokens, <unk>, lone and invalid bytes,
# pieces that start with U+2581 after a control token.
space_piece = sp.piece_to_id("\u2581")
word = sp.encode("hello")[0]
decodes = [
    [sp.bos_id(), word, sp.eos_id()],
    [sp.bos_id(), space_piece, word],
    [space_piece, space_piece, word],
    [sp.unk_id(), word],
    [word, sp.unk_id()],
    [byte(0xE2), byte(0x82)],  # truncated sequence
    [byte(0xE2), byte(0x82), byte(0xAC), word],  # the euro sign
    [byte(0xFF), byte(0x41), byte(0xC3)],
    [byte(0x20), word],
    [byte(0xF0), byte(0x9F), byte(0x98), byte(0x80), space_piece],
    [byte(0xED), byte(0xA0), byte(0x80)],  # an encoded surrogate
    [byte(0xC0), byte(0xAF)],  # overlong
    [sp.piece_to_id("<sep>"), word],
]
rng2 = random.Random(3)
for _ in range(200):
    decodes.append([rng2.randrange(n) for _ in range(rng2.randint(1, 12))])
decode_cases = [{"ids": ids, "decoded": sp.decode(ids)} for ids in decodes]

with open(os.path.join(out_dir, "cases.json"), "w", encoding="utf-8") as f:
    json.dump({"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "vocab": n,
               "encode": cases, "decode": decode_cases,
               "question": question_case, "chat": {"message": chat_message, "ids": chat_ids}}, f, ensure_ascii=False)
print(f"spm_oracle: {n} pieces, {len(cases)} encode cases, {len(decode_cases)} decode cases")
