"""Structured output and tool calls of `lava serve` through the official openai
client (called by tests/serve.rs; a Qwen2.5 model, whose chat template renders tools).

Usage: serve_openai_tools.py BASE_URL MODEL RUNS FINAL_CHOICE
Checks, and prints one JSON object with what it saw:
- response_format json_schema (strict) in RUNS seeded sampled runs: every answer
  parsed by json.loads and validated by the jsonschema package against the schema;
- response_format json_object: a JSON object;
- tool_choice "required": a get_weather call whose arguments validate against its
  parameters (and the prompt's token count), then the round trip: the assistant's
  calls and a tool result for each sent back, and the model's final answer (text, no call) under tool_choice FINAL_CHOICE;
- tool_choice naming a function: a call of that function;
- tool_choice "auto": what the model chose (reported; asserted by the caller where
  the model is known to call).
"""
import json
import sys

import jsonschema
import openai

base_url, model, runs, final_choice = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
out = {}

# json_schema, strict, sampled: valid every time.
schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 16},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "languages": {"type": "array", "items": {"type": "string", "enum": ["Rust", "Python", "C", "Go"]}, "minItems": 1, "maxItems": 3},
        "senior": {"type": "boolean"},
    },
    "required": ["name", "age", "languages", "senior"],
    "additionalProperties": False,
}
ask = [{"role": "user", "content": "Invent a programmer and describe them as JSON with name, age, languages and senior."}]
answers = []
for seed in range(runs):
    r = client.chat.completions.create(
        model=model,
        messages=ask,
        max_tokens=96,
        temperature=1.0,
        seed=seed,
        response_format={"type": "json_schema", "json_schema": {"name": "programmer", "schema": schema, "strict": True}},
    )
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop", (seed, r.choices[0].finish_reason, text)
    value = json.loads(text)
    jsonschema.validate(value, schema)
    answers.append(value)
out["schema_answers"] = answers

r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Give the capital of France as a JSON object."}],
    max_tokens=48,
    temperature=0,
    response_format={"type": "json_object"},
)
value = json.loads(r.choices[0].message.content)
assert isinstance(value, dict), value
out["json_object"] = value

weather = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
    "additionalProperties": False,
}
tools = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": weather}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the local time in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"], "additionalProperties": False},
        },
    },
]
messages = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
r = client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice="required", max_tokens=64, temperature=0)
choice = r.choices[0]
assert choice.finish_reason == "tool_calls", choice
calls = choice.message.tool_calls
assert calls and all(c.type == "function" for c in calls), choice
call = calls[0]
args = json.loads(call.function.arguments)
params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
jsonschema.validate(args, params[call.function.name])
out["required_call"] = {"name": call.function.name, "arguments": args, "content": choice.message.content, "calls": len(calls),
                       "prompt_tokens": r.usage.prompt_tokens}

# The round trip: the calls and a result for each go back; the model answers in
# text (tool_choice "none": no further call; FINAL_CHOICE "auto" lets the model choose).
messages.append(choice.message.model_dump(exclude_none=True))
for c in calls:
    city = json.loads(c.function.arguments).get("city", "Paris")
    result = {"city": city, "temperature_celsius": 18, "sky": "sunny"} if c.function.name == "get_weather" else {"city": city, "time": "14:05"}
    messages.append({"role": "tool", "tool_call_id": c.id, "content": json.dumps(result)})
r = client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice=final_choice, max_tokens=48, temperature=0)
final = r.choices[0]
out["final"] = {"content": final.message.content, "finish_reason": final.finish_reason, "tool_calls": len(final.message.tool_calls or [])}

r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_time"}},
    max_tokens=48,
    temperature=0,
)
c = r.choices[0]
assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c
out["named_call"] = {"name": c.message.tool_calls[0].function.name, "arguments": json.loads(c.message.tool_calls[0].function.arguments)}

r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is the weather in Berlin?"}], tools=tools, max_tokens=64, temperature=0)
c = r.choices[0]
out["auto"] = {
    "finish_reason": c.finish_reason,
    "content": c.message.content,
    "calls": [{"name": t.function.name, "arguments": json.loads(t.function.arguments)} for t in (c.message.tool_calls or [])],
}

print(json.dumps(out))
