"""The official OpenAI Python SDK against tally's gateway, changing only base_url:
a completion, a stream (with usage), tools, embeddings, the model list and errors in
OpenAI's shape. tests/sdk/run.sh starts tally and the fake provider and runs this."""

import os
import sys

import openai
from openai import OpenAI

base = os.environ["TALLY_BASE"]
key = os.environ["TALLY_KEY"]
client = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
failures = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f": {detail}"))
    if not cond:
        failures.append(name)


# A completion.
raw = client.chat.completions.with_raw_response.create(
    model="gpt-4o",
    max_tokens=20,
    messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
)
r = raw.parse()
check("completion text", r.choices[0].message.content == "word0 word1 word2 word3 word4 ", r)
check("completion usage", r.usage.completion_tokens == 5, r.usage)
check("cost header", float(raw.headers["x-tally-cost-usd"]) > 0, dict(raw.headers))

# A stream, with the usage chunk asked for.
chunks = list(
    client.chat.completions.create(
        model="claude-sonnet-4",
        max_tokens=20,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check("stream text", text == "word0 word1 word2 word3 word4 ", text)
last = chunks[-1]
check("stream usage", last.usage is not None and last.usage.completion_tokens == 5, last)

# Tools.
r = client.chat.completions.create(
    model="gpt-4o",
    messages=[{"role": "user", "content": "weather in Paris?"}],
    tools=[{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
)
check("tool call", r.choices[0].message.tool_calls[0].function.name == "get_weather", r)

# Embeddings and the model list.
e = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
check("embeddings", len(e.data) == 2, e)
ids = [m.id for m in client.models.list()]
check("models", "gpt-4o" in ids and "claude-sonnet-4" in ids, ids)

# Errors, in OpenAI's shape, raised as the SDK's own exceptions.
try:
    client.chat.completions.create(
        model="o3", temperature=0.5, messages=[{"role": "user", "content": "x"}])
    check("invalid parameter refused", False, "no error")
except openai.BadRequestError as err:
    check("invalid parameter refused",
          err.code == "invalid_parameter_for_model" and err.param == "temperature", err.body)
try:
    client.chat.completions.create(model="gpt-9-ultra", messages=[{"role": "user", "content": "x"}])
    check("unknown model", False, "no error")
except openai.NotFoundError as err:
    check("unknown model", err.code == "model_not_found", err.body)
try:
    OpenAI(base_url=f"{base}/v1", api_key="tly_wrong", max_retries=0).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    check("bad key", False, "no error")
except openai.AuthenticationError as err:
    check("bad key", err.code == "invalid_api_key", err.body)

if failures:
    print(f"openai sdk: {len(failures)} failed: {', '.join(failures)}")
    sys.exit(1)
print("openai sdk: all passed")
