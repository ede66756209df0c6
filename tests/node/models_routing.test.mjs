// Model routing and preflight through the official Node SDK (SDK → tollgate serve → simulator):
// an alias is served by its model (and says so in x-tollgate-model), a context-window
// overflow is BadRequestError with the numbers, and a strict schema error names its path.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { BadRequestError } from 'openai';
import { rejection, startGateway, startMock } from './support.mjs';

let sim;
let gateway;
let client;
before(async () => {
  sim = await startMock();
  const started = await startGateway(sim, ['member']);
  gateway = started.gateway;
  client = gateway.client(started.keys[0].key, { maxRetries: 0 });
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

test('an alias is served by its model', async () => {
  const { data, response } = await client.responses
    .create({ model: 'reasoning', input: 'hello', max_output_tokens: 200 })
    .withResponse();
  assert.equal(response.headers.get('x-tollgate-model'), 'o3-mini');
  assert.ok(data.model.startsWith('o3-mini'), data.model);
});

test('a request beyond the context window is refused with the numbers', async () => {
  const err = await rejection(
    client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'hi' }],
      max_completion_tokens: 500000,
    }),
    BadRequestError,
  );
  assert.equal(err.code, 'context_length_exceeded');
  assert.equal(err.param, 'messages');
  assert.match(err.message, /maximum context length is 128000 tokens/);
  assert.match(err.message, /500000 in the completion \(max_completion_tokens\)/);
});

test('a strict schema error names its path', async () => {
  const err = await rejection(
    client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'hi' }],
      response_format: {
        type: 'json_schema',
        json_schema: {
          name: 'p',
          strict: true,
          schema: { type: 'object', properties: { a: { type: 'string' } }, required: ['a'] },
        },
      },
    }),
    BadRequestError,
  );
  assert.equal(err.code, 'invalid_json_schema');
  assert.equal(err.param, 'response_format.json_schema.schema');
  assert.match(err.message, /additionalProperties/);
});
