// Error classes of the official Node SDK against the mock, and the SDK's own retries.

import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { AuthenticationError, BadRequestError, NotFoundError, RateLimitError } from 'openai';
import { MODEL, header, startMock } from './support.mjs';

const ERROR_KEYS = ['code', 'message', 'param', 'type'];

let mock;
let keyedMock;
let client;
before(async () => {
  [mock, keyedMock] = await Promise.all([startMock(), startMock('--api-key', 'good-key')]);
  client = mock.client();
});
after(() => {
  mock?.close();
  keyedMock?.close();
});
beforeEach(async () => {
  await mock.reset();
});

/** Asserts that `promise` rejects with an instance of `cls`, and returns the error. */
async function rejection(promise, cls) {
  let caught;
  await assert.rejects(promise, (err) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof cls, `expected ${cls.name}, got ${caught?.constructor?.name}: ${caught}`);
  return caught;
}

test('AuthenticationError for a key outside --api-key', async () => {
  const good = await keyedMock.client({ apiKey: 'good-key' }).models.retrieve('gpt-4o');
  assert.equal(good.id, 'gpt-4o');

  const err = await rejection(
    keyedMock.client({ apiKey: 'wrong-key' }).responses.create({ model: MODEL, input: 'hi' }),
    AuthenticationError,
  );
  assert.equal(err.status, 401);
  assert.equal(err.code, 'invalid_api_key');
  assert.equal(err.type, 'invalid_request_error');
  assert.ok(!err.message.includes('good-key'));
  assert.match(err.requestID, /^req_/);
});

test('a missing key is 401', async () => {
  const { status, body } = await mock.http('POST', '/v1/responses', { model: MODEL, input: 'hi' });

  assert.equal(status, 401);
  assert.deepEqual(Object.keys(body.error).sort(), ERROR_KEYS);
  assert.equal(body.error.code, null);
  assert.equal(body.error.type, 'invalid_request_error');
});

test('NotFoundError for an unknown model', async () => {
  const err = await rejection(client.responses.create({ model: 'gpt-does-not-exist', input: 'hi' }), NotFoundError);
  assert.equal(err.code, 'model_not_found');
  assert.ok(err.message.includes('gpt-does-not-exist'));

  const chatErr = await rejection(
    client.chat.completions.create({ model: 'gpt-does-not-exist', messages: [{ role: 'user', content: 'hi' }] }),
    NotFoundError,
  );
  assert.equal(chatErr.code, 'model_not_found');
});

test('BadRequestError for response_format on /v1/responses', async () => {
  // Plain JS passes the field through; TypeScript would reject it at compile time.
  const err = await rejection(
    client.responses.create({ model: MODEL, input: 'hi', response_format: { type: 'json_object' } }),
    BadRequestError,
  );
  assert.equal(err.status, 400);
  assert.equal(err.code, 'unsupported_parameter');
  assert.equal(err.param, 'response_format');
  assert.ok(err.message.includes('text.format'), err.message);
  assert.equal((await mock.recorded('/v1/responses')).length, 1, 'a 400 is not retried');
});

test('BadRequestError for an unknown parameter', async () => {
  const err = await rejection(client.responses.create({ model: MODEL, input: 'hi', frobnicate: true }), BadRequestError);
  assert.equal(err.code, 'unknown_parameter');
  assert.equal(err.param, 'frobnicate');
});

test('an unknown path is 404 Invalid URL', async () => {
  const { status, body } = await mock.http('GET', '/v1/nope', undefined, { authorization: 'Bearer sk-test' });

  assert.equal(status, 404);
  assert.deepEqual(Object.keys(body.error).sort(), ERROR_KEYS);
  assert.ok(body.error.message.startsWith('Invalid URL (GET /v1/nope)'), body.error.message);
});

test('RateLimitError after the SDK retries (queued faults)', async () => {
  await mock.queueFaults({ count: 3, status: 429, retry_after_ms: 10, path: '/v1/responses' });
  const retrying = mock.client({ maxRetries: 2 });

  const err = await rejection(retrying.responses.create({ model: MODEL, input: 'hi' }), RateLimitError);
  assert.equal(err.status, 429);
  assert.equal(err.code, 'rate_limit_exceeded');

  const attempts = await mock.recorded('/v1/responses');
  assert.deepEqual(
    attempts.map((a) => a.status),
    [429, 429, 429],
  );
  assert.deepEqual(
    attempts.map((a) => header(a, 'x-stainless-retry-count')),
    ['0', '1', '2'],
  );

  // The queue is used up: the next request goes through.
  assert.equal((await retrying.responses.create({ model: MODEL, input: 'hi' })).status, 'completed');
  assert.equal((await mock.recorded('/v1/responses')).length, 4);
});

test('RateLimitError after the SDK retries (x-sim-status header)', async () => {
  await rejection(
    mock.client({ maxRetries: 2 }).chat.completions.create(
      { model: MODEL, messages: [{ role: 'user', content: 'hi' }] },
      { headers: { 'x-sim-status': '429', 'x-sim-retry-after-ms': '10' } },
    ),
    RateLimitError,
  );
  const attempts = await mock.recorded('/v1/chat/completions');
  assert.deepEqual(
    attempts.map((a) => a.status),
    [429, 429, 429],
  );
});

test('a 503 then success is retried by the SDK', async () => {
  await mock.queueFaults({ count: 1, status: 503, retry_after_ms: 10 });

  const response = await mock.client({ maxRetries: 2 }).responses.create({ model: MODEL, input: 'hi' });

  assert.equal(response.status, 'completed');
  assert.deepEqual(
    (await mock.recorded('/v1/responses')).map((a) => a.status),
    [503, 200],
  );
});
