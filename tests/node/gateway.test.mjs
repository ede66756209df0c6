// What only the gateway does, through the official Node SDK (SDK → tollgate serve → simulator):
// the guide's two templates, the errors tollgate decides itself, upstream errors after the
// gateway's retries, key revocation through the CLI while the server runs, stream fidelity
// against the simulator, and the usage records a known set of calls leaves behind.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import {
  AuthenticationError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
} from 'openai';
import {
  GATEWAY_UPSTREAM_ATTEMPTS,
  LONG_PROMPT,
  MODEL,
  TICKET_PROMPT,
  TICKET_SCHEMA,
  WEATHER_QUESTION,
  WEATHER_TOOL_RESPONSES,
  collect,
  parseTicket,
  rejection,
  startGateway,
  startMock,
} from './support.mjs';

const ERROR_KEYS = ['code', 'message', 'param', 'type'];
const REVOCATION_DEADLINE_MS = 1000;

let sim;
let gateway;
let member;
let viewer;
let revocable;
let client;
before(async () => {
  sim = await startMock();
  ({
    gateway,
    keys: [member, viewer, revocable],
  } = await startGateway(sim, ['member', 'viewer', 'member']));
  client = gateway.client(member.key);
});
after(async () => {
  try {
    if (gateway) {
      const status = await gateway.terminate();
      assert.equal(status, 0, `tollgate serve exited ${status} on SIGTERM; stderr:\n${gateway.stderr()}`);
    }
  } finally {
    gateway?.close();
    sim?.close();
  }
});
beforeEach(async () => {
  await sim.reset();
});

describe('the guide templates', () => {
  test('concise-assistant draft with instructions and max_output_tokens, usage logged', async () => {
    const instructions = 'You are a concise assistant. Answer in at most three sentences.';
    const input = 'Draft a reply to a customer asking when their order ships.';
    const logged = [];
    const logUsage = (u) => logged.push(`draft usage: input=${u.input_tokens} output=${u.output_tokens} total=${u.total_tokens}`);

    const response = await client.responses.create({ model: MODEL, instructions, input, max_output_tokens: 300 });
    logUsage(response.usage);

    assert.equal(response.status, 'completed');
    assert.equal(response.instructions, instructions);
    assert.equal(response.max_output_tokens, 300);
    assert.notEqual(response.output_text.trim(), '');
    const { usage } = response;
    assert.ok(usage.output_tokens > 0 && usage.output_tokens <= 300);
    assert.equal(usage.total_tokens, usage.input_tokens + usage.output_tokens);
    assert.ok(logged[0].endsWith(`total=${usage.total_tokens}`), logged[0]);
    // The body reached the simulator unchanged.
    const records = await sim.recorded('/v1/responses');
    assert.equal(records.length, 1);
    assert.deepEqual(records[0].body, { model: MODEL, instructions, input, max_output_tokens: 300 });

    const cut = await client.responses.create({ model: MODEL, instructions, input: LONG_PROMPT, max_output_tokens: 16 });
    assert.equal(cut.status, 'incomplete');
    assert.equal(cut.incomplete_details?.reason, 'max_output_tokens');
    assert.ok(cut.usage.output_tokens > 0 && cut.usage.output_tokens <= 16);
  });

  test('helpdesk ticket classifier with a strict JSON schema', async () => {
    const format = { type: 'json_schema', name: 'ticket_classification', schema: TICKET_SCHEMA, strict: true };

    const response = await client.responses.create({ model: MODEL, input: TICKET_PROMPT, text: { format } });

    assert.equal(response.status, 'completed');
    const ticket = parseTicket(response.output_text);
    assert.ok(['low', 'medium', 'high'].includes(ticket.priority));
    const records = await sim.recorded('/v1/responses');
    assert.equal(records.length, 1);
    assert.deepEqual(records[0].body.text.format, format);
  });
});

describe('errors tollgate decides itself', () => {
  test('an unknown key is AuthenticationError, not retried, never forwarded', async () => {
    const err = await rejection(
      gateway.client('tg-dev-0000000000000000000000000000000', { maxRetries: 2 }).responses.create({
        model: MODEL,
        input: 'hi',
      }),
      AuthenticationError,
    );
    assert.equal(err.status, 401);
    assert.equal(err.code, 'invalid_api_key');
    assert.equal(err.type, 'invalid_request_error');
    assert.ok(err.message.includes('tollgate keys create'), err.message);
    assert.equal(err.headers.get('x-should-retry'), 'false');
    assert.match(err.requestID, /^req_/);
    assert.deepEqual(await sim.recorded(), []);
  });

  test('a missing key is 401 invalid_api_key (raw HTTP)', async () => {
    const { status, body } = await gateway.http('POST', '/v1/responses', { model: MODEL, input: 'hi' });

    assert.equal(status, 401);
    assert.deepEqual(Object.keys(body.error).sort(), ERROR_KEYS);
    assert.equal(body.error.code, 'invalid_api_key');
    assert.equal(body.error.type, 'invalid_request_error');
    assert.deepEqual(await sim.recorded(), []);
  });

  test('a viewer key is PermissionDeniedError (403)', async () => {
    const err = await rejection(
      gateway.client(viewer.key, { maxRetries: 2 }).responses.create({ model: MODEL, input: 'hi' }),
      PermissionDeniedError,
    );
    assert.equal(err.status, 403);
    assert.equal(err.code, 'permission_denied');
    assert.equal(err.type, 'permission_error');
    assert.deepEqual(await sim.recorded(), []);
  });
});

describe('upstream errors after the gateway retries', () => {
  test('an unknown model is NotFoundError, not retried, with both request ids', async () => {
    const err = await rejection(client.responses.create({ model: 'gpt-does-not-exist', input: 'hi' }), NotFoundError);
    assert.equal(err.code, 'model_not_found');
    assert.ok(err.message.includes('gpt-does-not-exist'));
    assert.deepEqual(
      (await sim.recorded('/v1/responses')).map((r) => r.status),
      [404],
    );
    assert.match(err.headers.get('x-request-id'), /^req_/);
    assert.match(err.headers.get('x-upstream-request-id'), /^req_/);
    assert.notEqual(err.headers.get('x-upstream-request-id'), err.headers.get('x-request-id'));
  });

  test('an upstream 429 is RateLimitError after the gateway retries', async () => {
    const err = await rejection(
      gateway.client(member.key, { maxRetries: 0 }).responses.create(
        { model: MODEL, input: 'hi' },
        { headers: { 'x-sim-status': '429', 'x-sim-retry-after-ms': '10' } },
      ),
      RateLimitError,
    );
    assert.equal(err.status, 429);
    assert.equal(err.code, 'rate_limit_exceeded');
    assert.equal(err.headers.get('retry-after-ms'), '10');
    assert.deepEqual(
      (await sim.recorded('/v1/responses')).map((r) => r.status),
      Array(GATEWAY_UPSTREAM_ATTEMPTS).fill(429),
    );
  });

  test('with the SDK retrying too: 3 x 3 = 9 upstream attempts', async () => {
    await sim.queueFaults({ count: 100, status: 429, retry_after_ms: 10, path: '/v1/chat/completions' });

    await rejection(
      gateway.client(member.key, { maxRetries: 2 }).chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'hi' }],
      }),
      RateLimitError,
    );
    assert.equal((await sim.recorded('/v1/chat/completions')).length, 9);
  });
});

/** True if a call with this client succeeds, false on 401; anything else fails the test. */
async function callsSucceed(keyClient) {
  try {
    await keyClient.models.retrieve('gpt-4o');
    return true;
  } catch (err) {
    if (err instanceof AuthenticationError) {
      return false;
    }
    throw err;
  }
}

/** Polls `predicate` until true; resolves to the milliseconds it took, or null past the deadline. */
async function pollUntil(predicate, deadlineMs) {
  const start = performance.now();
  for (;;) {
    if (await predicate()) {
      return performance.now() - start;
    }
    if (performance.now() - start > deadlineMs) {
      return null;
    }
  }
}

describe('keys', () => {
  test('a key revoked with `tollgate keys revoke` stops working within one second', async () => {
    const keyClient = gateway.client(revocable.key, { maxRetries: 0 });
    assert.ok(await callsSucceed(keyClient), 'the key must work before it is revoked');

    gateway.data.revokeKey(revocable.id);
    const took = await pollUntil(async () => !(await callsSucceed(keyClient)), REVOCATION_DEADLINE_MS);

    assert.notEqual(took, null, `a revoked key still worked ${REVOCATION_DEADLINE_MS} ms after \`tollgate keys revoke\``);
    const err = await rejection(keyClient.responses.create({ model: MODEL, input: 'hi' }), AuthenticationError);
    assert.equal(err.code, 'invalid_api_key');
    assert.ok(await callsSucceed(gateway.client(member.key, { maxRetries: 0 })), 'other keys are unaffected');
  });
});

const VOLATILE_KEYS = new Set(['id', 'item_id', 'call_id', 'created', 'created_at', 'completed_at']);

/** An SDK event or chunk without ids and timestamps (they differ on every call). */
function normalized(value) {
  if (Array.isArray(value)) {
    return value.map(normalized);
  }
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([k]) => !VOLATILE_KEYS.has(k))
        .map(([k, v]) => [k, normalized(v)]),
    );
  }
  return value;
}

describe('stream fidelity: through the gateway the SDK yields what it yields from the simulator', () => {
  const direct = () => sim.client();

  test('responses stream', async () => {
    const request = { model: MODEL, input: LONG_PROMPT, max_output_tokens: 120, stream: true };

    const expected = (await collect(await direct().responses.create(request))).map(normalized);
    const got = (await collect(await client.responses.create(request))).map(normalized);

    assert.ok(expected.length > 5);
    assert.deepEqual(
      got.map((e) => e.type),
      expected.map((e) => e.type),
    );
    assert.deepEqual(got, expected);
  });

  test('responses stream with a function call', async () => {
    const request = { model: MODEL, input: WEATHER_QUESTION, tools: [WEATHER_TOOL_RESPONSES], stream: true };

    const expected = (await collect(await direct().responses.create(request))).map(normalized);
    const got = (await collect(await client.responses.create(request))).map(normalized);

    assert.ok(expected.some((e) => e.type === 'response.function_call_arguments.delta'));
    assert.deepEqual(got, expected);
  });

  for (const includeUsage of [false, true]) {
    test(`chat stream ${includeUsage ? 'with' : 'without'} include_usage`, async () => {
      const request = { model: MODEL, messages: [{ role: 'user', content: LONG_PROMPT }], stream: true };
      if (includeUsage) {
        request.stream_options = { include_usage: true };
      }

      const expected = (await collect(await direct().chat.completions.create(request))).map(normalized);
      const got = (await collect(await client.chat.completions.create(request))).map(normalized);

      assert.ok(expected.length > 3);
      assert.deepEqual(got, expected);
      assert.equal(got.at(-1).usage != null, includeUsage);
      assert.ok(got.slice(0, -1).every((c) => c.usage == null));
    });
  }
});

describe('usage records', () => {
  test('after SIGTERM, `tollgate usage --by key` counts every call and the SDK-reported tokens', async () => {
    // A gateway of its own, so its records are exactly this test's calls.
    const { gateway: own, keys } = await startGateway(sim, ['member']);
    const [key] = keys;
    try {
      const c = own.client(key.key, { maxRetries: 0 });
      let calls = 0;
      let input = 0;
      let output = 0;
      const count = (i, o) => {
        calls += 1;
        input += i;
        output += o;
      };

      const r = await c.responses.create({ model: MODEL, input: 'Say something about bridges.', max_output_tokens: 50 });
      count(r.usage.input_tokens, r.usage.output_tokens);

      const events = await collect(await c.responses.create({ model: MODEL, input: LONG_PROMPT, stream: true }));
      const final = events.at(-1).response;
      count(final.usage.input_tokens, final.usage.output_tokens);

      const messages = [{ role: 'user', content: 'Draft a thank-you note.' }];
      const chat = await c.chat.completions.create({ model: MODEL, messages });
      count(chat.usage.prompt_tokens, chat.usage.completion_tokens);

      const chunks = await collect(
        await c.chat.completions.create({ model: MODEL, messages, stream: true, stream_options: { include_usage: true } }),
      );
      count(chunks.at(-1).usage.prompt_tokens, chunks.at(-1).usage.completion_tokens);

      // Without include_usage the caller sees no usage, yet the gateway accounts the tokens;
      // the simulator is deterministic, so ask it directly what they are.
      const plain = [{ role: 'user', content: LONG_PROMPT }];
      const noUsage = await collect(await c.chat.completions.create({ model: MODEL, messages: plain, stream: true }));
      assert.ok(noUsage.every((chunk) => chunk.usage == null));
      const reference = (
        await collect(
          await sim.client().chat.completions.create({
            model: MODEL,
            messages: plain,
            stream: true,
            stream_options: { include_usage: true },
          }),
        )
      ).at(-1).usage;
      count(reference.prompt_tokens, reference.completion_tokens);

      const e = await c.embeddings.create({ model: 'text-embedding-3-small', input: 'The quick brown fox' });
      count(e.usage.prompt_tokens, 0);

      await c.moderations.create({ model: 'omni-moderation-latest', input: 'I love sunny days.' });
      count(0, 0);

      await rejection(c.responses.create({ model: 'gpt-does-not-exist', input: 'hi' }), NotFoundError);
      count(0, 0);

      const status = await own.terminate();
      assert.equal(status, 0, `tollgate serve exited ${status} on SIGTERM; stderr:\n${own.stderr()}`);

      const byKey = own.data.usage('key');
      assert.deepEqual(
        byKey.map((row) => row.group),
        [key.id],
        JSON.stringify(byKey),
      );
      const [row] = byKey;
      assert.equal(row.requests, calls);
      assert.equal(row.errors, 1);
      assert.equal(row.input_tokens, input);
      assert.equal(row.output_tokens, output);
      assert.equal(row.total_tokens, input + output);
    } finally {
      own.close();
    }
  });
});
