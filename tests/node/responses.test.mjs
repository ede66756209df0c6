// Responses API through the official Node SDK: create, json_schema, streaming, zodTextFormat.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { zodTextFormat } from 'openai/helpers/zod';
import {
  LONG_PROMPT,
  MODEL,
  TICKET_PROMPT,
  TICKET_SCHEMA,
  Ticket,
  assertResponseUsage,
  collect,
  parseTicket,
  startTarget,
  TARGETS,
} from './support.mjs';

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

    test('responses.create: text answer', async () => {
      const response = await client.responses.create({ model: MODEL, input: LONG_PROMPT, max_output_tokens: 2000 });

      assert.equal(response.object, 'response');
      assert.match(response.id, /^resp_/);
      assert.match(response._request_id, /^req_/);
      assert.equal(response.status, 'completed');
      assert.equal(response.incomplete_details, null);
      const message = response.output[0];
      assert.equal(message.type, 'message');
      assert.equal(message.role, 'assistant');
      assert.equal(message.content[0].type, 'output_text');
      assert.notEqual(response.output_text.trim(), '');
      assertResponseUsage(response.usage);
      assert.ok(response.usage.output_tokens <= 2000);
    });

    test('responses.create: deterministic for the same request', async () => {
      const first = await client.responses.create({ model: MODEL, input: 'Say something about bridges.' });
      const second = await client.responses.create({ model: MODEL, input: 'Say something about bridges.' });
      assert.equal(first.output_text, second.output_text);
      assert.deepEqual(first.usage, second.usage);
    });

    test('responses.create: cut by max_output_tokens', async () => {
      const full = await client.responses.create({ model: MODEL, input: LONG_PROMPT });
      assert.ok(full.usage.output_tokens > 16, 'answer too short to test the cut');

      const cut = await client.responses.create({ model: MODEL, input: LONG_PROMPT, max_output_tokens: 16 });

      assert.equal(cut.status, 'incomplete');
      assert.equal(cut.incomplete_details?.reason, 'max_output_tokens');
      assert.notEqual(cut.output_text.trim(), '');
      assert.ok(cut.output_text.length < full.output_text.length);
      assert.ok(cut.usage.output_tokens > 0 && cut.usage.output_tokens <= 16);
      assertResponseUsage(cut.usage);
    });

    test('responses.create: json_schema text.format', async () => {
      const response = await client.responses.create({
        model: MODEL,
        input: TICKET_PROMPT,
        text: { format: { type: 'json_schema', name: 'ticket_classification', schema: TICKET_SCHEMA, strict: true } },
      });

      assert.equal(response.status, 'completed');
      parseTicket(response.output_text);
      assertResponseUsage(response.usage);
    });

    test('responses.create stream: typed events', async () => {
      const events = await collect(await client.responses.create({ model: MODEL, input: LONG_PROMPT, stream: true }));

      assert.ok(events.length > 0, 'stream yielded no events');
      assert.equal(events[0].type, 'response.created');
      assert.equal(events[0].response.status, 'in_progress');
      assert.equal(events[1].type, 'response.in_progress');
      assert.deepEqual(
        events.map((e) => e.sequence_number),
        events.map((_, i) => i),
      );

      const deltas = events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta);
      assert.ok(deltas.length > 1, 'expected the text in several deltas');
      const text = deltas.join('');
      const done = events.filter((e) => e.type === 'response.output_text.done');
      assert.equal(done.length, 1);
      assert.equal(done[0].text, text);

      const last = events.at(-1);
      assert.equal(last.type, 'response.completed');
      assert.equal(events.filter((e) => e.type === 'response.completed').length, 1);
      assert.equal(last.response.status, 'completed');
      const finalText = last.response.output
        .filter((item) => item.type === 'message')
        .flatMap((item) => item.content)
        .filter((part) => part.type === 'output_text')
        .map((part) => part.text)
        .join('');
      assert.equal(finalText, text);
      assertResponseUsage(last.response.usage);
    });

    test('responses.stream helper with zodTextFormat', async () => {
      const stream = client.responses.stream({
        model: MODEL,
        input: TICKET_PROMPT,
        text: { format: zodTextFormat(Ticket, 'ticket_classification') },
      });
      const deltas = [];
      for await (const event of stream) {
        if (event.type === 'response.output_text.delta') {
          deltas.push(event.delta);
        }
      }
      const final = await stream.finalResponse();

      assert.ok(deltas.length > 0);
      assert.deepEqual(final.output_parsed, parseTicket(deltas.join('')));
      assertResponseUsage(final.usage);
    });

    test('responses.parse with zodTextFormat', async () => {
      await sim.reset();
      const response = await client.responses.parse({
        model: MODEL,
        input: TICKET_PROMPT,
        text: { format: zodTextFormat(Ticket, 'ticket_classification') },
      });

      assert.ok(response.output_parsed, 'no output_parsed');
      assert.deepEqual(response.output_parsed, parseTicket(response.output_text));
      // The helper sends a strict json_schema text.format on the wire.
      const [record, ...rest] = await sim.recorded('/v1/responses');
      assert.equal(rest.length, 0);
      assert.equal(record.body.text.format.type, 'json_schema');
      assert.equal(record.body.text.format.strict, true);
    });

    test('raw response headers via withResponse()', async () => {
      const { data, response } = await client.responses.create({ model: MODEL, input: 'hi' }).withResponse();

      assert.equal(response.status, 200);
      assert.ok(response.headers.get('content-type').startsWith('application/json'));
      assert.match(response.headers.get('x-request-id'), /^req_/);
      assert.equal(response.headers.get('openai-version'), '2020-10-01');
      assert.ok(Number(response.headers.get('openai-processing-ms')) >= 0);
      for (const kind of ['requests', 'tokens']) {
        assert.ok(Number(response.headers.get(`x-ratelimit-limit-${kind}`)) > 0);
        assert.ok(Number(response.headers.get(`x-ratelimit-remaining-${kind}`)) >= 0);
        assert.match(response.headers.get(`x-ratelimit-reset-${kind}`), /^(\d+h)?(\d+m)?([\d.]+m?s)?$/);
      }
      assert.equal(data.status, 'completed');
    });
  });
}
