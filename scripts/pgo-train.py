#!/usr/bin/env python3
"""The training load of scripts/build-release: calls a running gateway the way
applications do, so the profile it leaves behind weighs the code by how often a real
request runs it. Mostly small plain Chat calls (the hot path), then streamed Chat and
Responses calls, embeddings, model lists, and the usual refusals (a bad key, an unknown
model, malformed JSON). Standard library only.

    pgo-train.py BASE_URL KEY [SECONDS]
"""

import http.client
import json
import sys
import threading
import time
import urllib.parse

BASE, KEY = sys.argv[1], sys.argv[2]
SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
THREADS = 8

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in five words."},
]
# (weight, method, path, body, key): weights are per 100 calls.
CALLS = [
    (70, "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 64}, KEY),
    (8, "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}, KEY),
    (6, "POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "Write a haiku.", "max_output_tokens": 50}, KEY),
    (4, "POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "Write a haiku.", "stream": True}, KEY),
    (4, "POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a b c", "d e f"]}, KEY),
    (3, "GET", "/v1/models", None, KEY),
    (2, "POST", "/v1/chat/completions", {"model": "no-such-model", "messages": MESSAGES}, KEY),
    (2, "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}, "tg-dev-not-a-key"),
    (1, "POST", "/v1/chat/completions", "{not json", KEY),
]
SCHEDULE = [c for c in CALLS for _ in range(c[0])]

url = urllib.parse.urlsplit(BASE)
done = [0] * THREADS
failed = []


def worker(n):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    deadline = time.monotonic() + SECONDS
    i = n
    while time.monotonic() < deadline:
        _, method, path, body, key = SCHEDULE[i % len(SCHEDULE)]
        i += 7
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        try:
            conn.request(method, path, body=data, headers=headers)
            res = conn.getresponse()
            res.read()
            done[n] += 1
        except (OSError, http.client.HTTPException) as e:
            failed.append(repr(e))
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)


threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"pgo-train: {sum(done)} calls in {SECONDS:.0f} s, {len(failed)} failed")
if failed and len(failed) > sum(done) // 100:
    sys.exit(f"pgo-train: too many failures, e.g. {failed[0]}")
