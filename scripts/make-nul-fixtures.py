"""Generates tests/fixtures/tokenizers/nul.json: reference token ids of text holding NUL
characters (U+0000), which the server carries end to end (src/server/json_nul.h).

  prompts   [{"text", "ids"}]: stories260K's tokenizer.json, Tokenizer.encode(text,
            add_special_tokens=False) (the SentencePiece byte fallback: NUL is <0x00>), and
            "gpt2_ids" from phi-2's tokenizer.json (byte-level BPE: NUL is a byte character).
  chat      {"messages", "ids"}: the same messages rendered by Qwen2.5's chat template (as
            transformers' apply_chat_template renders it, add_generation_prompt=True) and
            encoded with stories260K's tokenizer, add_special_tokens=False: the prompt quiver's
            chat, Messages and Responses endpoints must build for the stories weights under
            that template (tests/e2e/test_dialects.py).

Usage: QV_PYTHON=/path/to/python scripts/make-nul-fixtures   (needs tokenizers, jinja2)
The shared data folder is $QV_SHARED_DIR or <repo>/../shared. CI never runs this.
"""
import json
import os

import jinja2
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("QV_SHARED_DIR") or os.path.join(ROOT, "..", "shared")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizers", "nul.json")

TEXTS = ["a\x00b", "\x00", "Once upon\x00 a time\x00\x00 there was", " \x00\n\x00\t x\x00y ",
         # a decoded random-token prompt, as vLLM's bench random dataset sends them
         "ful\x00 Lily\x00\x00 the bird.\x00\"", "caf\u00e9\x00\U0001F600\x00"]
MESSAGES = [{"role": "system", "content": "Be\x00 brief."},
            {"role": "user", "content": "Once\x00 upon a\x00\x00 time"}]


def main():
    stories = Tokenizer.from_file(os.path.join(SHARED, "models", "stories260K", "tokenizer.json"))
    gpt2 = Tokenizer.from_file(os.path.join(SHARED, "data", "tokenizers", "phi-2.tokenizer.json"))
    prompts = [{"text": t, "ids": stories.encode(t, add_special_tokens=False).ids,
                "gpt2_ids": gpt2.encode(t, add_special_tokens=False).ids} for t in TEXTS]
    for p in prompts:
        assert 3 in p["ids"], p  # <0x00> is stories260K's id 3
    tmpl = open(os.path.join(SHARED, "data", "chat-templates", "Qwen-Qwen2.5-7B-Instruct.jinja")).read()
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
    rendered = env.from_string(tmpl).render(messages=MESSAGES, add_generation_prompt=True)
    chat = {"messages": MESSAGES, "rendered": rendered,
            "ids": stories.encode(rendered, add_special_tokens=False).ids}
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"tokenizer": "stories260K", "prompts": prompts, "chat": chat}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
