"""Talks to a running `bipo serve` with the real `openai` client (scripts/test-openai-client.sh)."""
import sys

import openai

base, key = sys.argv[1], sys.argv[2]
c = openai.OpenAI(base_url=base, api_key=key)
msgs = [{"role": "user", "content": "How was your day?"}]

# Chat, steered through extra_body, with log-probabilities.
r = c.chat.completions.create(model="smol", messages=msgs, max_tokens=16, temperature=0,
                              logprobs=True, top_logprobs=3,
                              extra_body={"steering": [{"vector": "happy", "multiplier": 6}]})
assert r.object == "chat.completion", r
steered = r.choices[0].message.content
assert steered and r.usage.completion_tokens == len(r.choices[0].logprobs.content), r
assert len(r.choices[0].logprobs.content[0].top_logprobs) == 3
plain = c.chat.completions.create(model="smol", messages=msgs, max_tokens=16, temperature=0)
assert plain.choices[0].message.content != steered, "steering changed nothing"
zero = c.chat.completions.create(model="smol", messages=msgs, max_tokens=16, temperature=0,
                                 extra_body={"steering": [{"vector": "happy", "multiplier": 0}]})
assert zero.choices[0].message.content == plain.choices[0].message.content

# Streaming equals the whole answer.
s = c.chat.completions.create(model="smol", messages=msgs, max_tokens=16, temperature=0, stream=True,
                              stream_options={"include_usage": True},
                              extra_body={"steering": [{"vector": "happy", "multiplier": 6}]})
parts, usage = [], None
for chunk in s:
    if chunk.usage:
        usage = chunk.usage
    for ch in chunk.choices:
        parts.append(ch.delta.content or "")
assert "".join(parts) == steered, ("".join(parts), steered)
assert usage and usage.completion_tokens == r.usage.completion_tokens

# Completions, plain and streamed, with logprobs.
t = c.completions.create(model="smol", prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2)
assert t.choices[0].text.strip().startswith("Paris"), t
assert len(t.choices[0].logprobs.tokens) == t.usage.completion_tokens
ts = "".join(ch.choices[0].text for ch in c.completions.create(
    model="smol", prompt="The capital of France is", max_tokens=5, temperature=0, stream=True))
assert ts == t.choices[0].text

# Models, and errors surface as the client's exception types.
assert [m.id for m in c.models.list()] == ["smol"]
try:
    c.chat.completions.create(model="smol", messages=msgs, extra_body={"steering": [{"vector": "nope"}]})
    raise SystemExit("an unknown vector was accepted")
except openai.BadRequestError as e:
    assert "unknown steering vector" in str(e), e
try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass
print(f"openai {openai.__version__}: chat, steering via extra_body, logprobs, streaming, completions, errors: ok")
print(f"  steered: {steered!r}\n  plain:   {plain.choices[0].message.content!r}")
