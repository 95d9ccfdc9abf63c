"""Drives `lava serve` with the official openai client (called by tests/serve.rs).

Usage: serve_openai.py BASE_URL API_KEY QUESTION
Prints one JSON object: the greedy answer not streamed and streamed, the usage
of the first (with lava's kv_bytes), the model list, and the error class a
wrong key raises.
"""
import json
import sys

import openai

base_url, key, question = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)
messages = [{"role": "user", "content": question}]

r = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=32, temperature=0)
text = r.choices[0].message.content
usage = r.usage.model_dump()

streamed = ""
finish = None
for chunk in client.chat.completions.create(model="smollm2", messages=messages, max_tokens=32, temperature=0, stream=True):
    if chunk.choices:
        streamed += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish

models = [m.id for m in client.models.list().data]

bad = openai.OpenAI(base_url=base_url, api_key=key + "-wrong", max_retries=0, timeout=60)
try:
    bad.chat.completions.create(model="smollm2", messages=messages, max_tokens=1)
    bad_key = "accepted"
except openai.APIStatusError as e:
    bad_key = type(e).__name__

print(json.dumps({"text": text, "streamed": streamed, "finish": finish, "usage": usage, "models": models, "bad_key": bad_key}))
