// Error classes of the official Node SDK, and the SDK's own retries, against both targets.
// Through the gateway, an upstream error that the gateway retries costs `target.upstreamAttempts`
// simulator requests per SDK attempt (the gateway's own retries).

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { AuthenticationError, BadRequestError, NotFoundError, RateLimitError } from 'openai';
import { MODEL, TARGETS, header, rejection, startTarget } from './support.mjs';

const ERROR_KEYS = ['code', 'message', 'param', 'type'];

for (const targetName of TARGETS) {
  describe(targetName, () => {
    let target;
    let sim;
    let client;
    before(async () => {
      target = await startTarget(targetName);
      sim = target.sim;
      client = target.client();
    });
    after(async () => {
      await target?.close();
    });
    beforeEach(async () => {
      await sim.reset();
    });

    test('AuthenticationError for a wrong key', async () => {
      const good = await client.models.retrieve('gpt-4o');
      assert.equal(good.id, 'gpt-4o');

      const err = await rejection(
        target.client({ apiKey: 'wrong-key' }).responses.create({ model: MODEL, input: 'hi' }),
        AuthenticationError,
      );
      assert.equal(err.status, 401);
      assert.equal(err.code, 'invalid_api_key');
      assert.equal(err.type, 'invalid_request_error');
      assert.ok(!err.message.includes(target.apiKey));
      assert.match(err.requestID, /^req_/);
    });

    test('a missing key is 401', async () => {
      const { status, body } = await target.http('POST', '/v1/responses', { model: MODEL, input: 'hi' });

      assert.equal(status, 401);
      assert.deepEqual(Object.keys(body.error).sort(), ERROR_KEYS);
      assert.equal(body.error.type, 'invalid_request_error');
      if (target.name === 'mock') {
        assert.equal(body.error.code, null);
      } else {
        // The gateway answers itself and names the fix; the simulator never sees the call.
        assert.equal(body.error.code, 'invalid_api_key');
        assert.ok(body.error.message.includes('tollgate keys create'), body.error.message);
        assert.deepEqual(await sim.recorded(), []);
      }
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
      if (target.name === 'gateway') {
        // The gateway moves it to text.format (preflight.response_format_on_responses) and says so.
        const { data, response } = await client.responses
          .create({ model: MODEL, input: 'hi', response_format: { type: 'json_object' } })
          .withResponse();
        assert.match(response.headers.get('x-tollgate-warning'), /text\.format/);
        assert.equal(data.status, 'completed');
        const [sent] = await sim.recorded('/v1/responses');
        assert.equal(sent.body.response_format, undefined);
        assert.deepEqual(sent.body.text.format, { type: 'json_object' });
        return;
      }
      const err = await rejection(
        client.responses.create({ model: MODEL, input: 'hi', response_format: { type: 'json_object' } }),
        BadRequestError,
      );
      assert.equal(err.status, 400);
      assert.equal(err.code, 'unsupported_parameter');
      assert.equal(err.param, 'response_format');
      assert.ok(err.message.includes('text.format'), err.message);
      assert.equal((await sim.recorded('/v1/responses')).length, 1, 'a 400 is not retried');
    });

    test('BadRequestError for an unknown parameter', async () => {
      const err = await rejection(client.responses.create({ model: MODEL, input: 'hi', frobnicate: true }), BadRequestError);
      assert.equal(err.code, 'unknown_parameter');
      assert.equal(err.param, 'frobnicate');
    });

    test('an unknown path is 404 Invalid URL', async () => {
      const { status, body } = await target.http('GET', '/v1/nope', undefined, {
        authorization: `Bearer ${target.apiKey}`,
      });

      assert.equal(status, 404);
      assert.deepEqual(Object.keys(body.error).sort(), ERROR_KEYS);
      assert.ok(body.error.message.startsWith('Invalid URL (GET /v1/nope)'), body.error.message);
    });

    test('RateLimitError after the SDK retries (queued faults)', async () => {
      const perCall = target.upstreamAttempts;
      await sim.queueFaults({ count: 3 * perCall, status: 429, retry_after_ms: 10, path: '/v1/responses' });
      const retrying = target.client({ maxRetries: 2 });

      const err = await rejection(retrying.responses.create({ model: MODEL, input: 'hi' }), RateLimitError);
      assert.equal(err.status, 429);
      assert.equal(err.code, 'rate_limit_exceeded');

      // 3 SDK attempts, each costing `perCall` simulator requests.
      const attempts = await sim.recorded('/v1/responses');
      assert.deepEqual(
        attempts.map((a) => a.status),
        Array(3 * perCall).fill(429),
      );
      assert.deepEqual(
        attempts.map((a) => header(a, 'x-stainless-retry-count')),
        ['0', '1', '2'].flatMap((n) => Array(perCall).fill(n)),
      );

      // The queue is used up: the next request goes through.
      assert.equal((await retrying.responses.create({ model: MODEL, input: 'hi' })).status, 'completed');
      assert.equal((await sim.recorded('/v1/responses')).length, 3 * perCall + 1);
    });

    test('RateLimitError after the SDK retries (x-sim-status header)', async () => {
      await rejection(
        target.client({ maxRetries: 2 }).chat.completions.create(
          { model: MODEL, messages: [{ role: 'user', content: 'hi' }] },
          { headers: { 'x-sim-status': '429', 'x-sim-retry-after-ms': '10' } },
        ),
        RateLimitError,
      );
      const attempts = await sim.recorded('/v1/chat/completions');
      // Through the gateway: 3 SDK attempts x 3 gateway attempts = 9 simulator requests.
      assert.deepEqual(
        attempts.map((a) => a.status),
        Array(3 * target.upstreamAttempts).fill(429),
      );
    });

    test('a 503 then success is retried', async () => {
      await sim.queueFaults({ count: 1, status: 503, retry_after_ms: 10 });

      const response = await target.client({ maxRetries: 2 }).responses.create({ model: MODEL, input: 'hi' });

      assert.equal(response.status, 'completed');
      const attempts = await sim.recorded('/v1/responses');
      assert.deepEqual(
        attempts.map((a) => a.status),
        [503, 200],
      );
      // Directly the SDK retried; through the gateway the gateway did, and the SDK saw one 200.
      assert.deepEqual(
        attempts.map((a) => header(a, 'x-stainless-retry-count')),
        target.name === 'mock' ? ['0', '1'] : ['0', '0'],
      );
    });
  });
}
