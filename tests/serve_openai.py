"""Drives `lava serve` with the official openai client (called by tests/serve.rs).

Usage: serve_openai.py BASE_URL API_KEY QUESTION
Prints one JSON object: the greedy answer not streamed and streamed, the usage
of the first (with lava's kv_bytes), the model list, the error class a wrong
key raises, the chat log-probabilities (top 2) as the client parses them,
three sampled choices (n=3) not streamed and streamed, and the prompt's
log-probabilities of a completions echo.
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

# Log-probabilities: parsed by the client into its typed objects.
r = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
logprobs = [
    {"token": t.token, "logprob": t.logprob, "bytes": t.bytes, "top": [[x.token, x.logprob] for x in t.top_logprobs]}
    for t in r.choices[0].logprobs.content
]
lp_text = r.choices[0].message.content

# n=3 sampled choices from one prompt, then streamed.
r = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8, temperature=1.0, seed=7, n=3)
choices = [[c.index, c.message.content, c.finish_reason] for c in r.choices]
n_usage = r.usage.model_dump()
streamed_n = ["", "", ""]
for chunk in client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8, temperature=1.0, seed=7, n=3, stream=True):
    for c in chunk.choices:
        streamed_n[c.index] += c.delta.content or ""

# lm-eval's way: token ids, echo, no new tokens, logprobs.
r = client.completions.create(model="smollm2", prompt="The capital of France is Paris", max_tokens=0, echo=True, logprobs=1)
echo = {"text": r.choices[0].text, "tokens": r.choices[0].logprobs.tokens, "token_logprobs": r.choices[0].logprobs.token_logprobs}

print(json.dumps({"text": text, "streamed": streamed, "finish": finish, "usage": usage, "models": models, "bad_key": bad_key,
                  "logprobs": logprobs, "logprobs_text": lp_text, "choices": choices, "n_usage": n_usage, "streamed_n": streamed_n, "echo": echo}))
