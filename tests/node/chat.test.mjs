// Chat Completions through the official Node SDK: create, stream with and without usage, zodResponseFormat.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { zodResponseFormat } from 'openai/helpers/zod';
import { LONG_PROMPT, MODEL, TICKET_PROMPT, Ticket, collect, parseTicket, startTarget, TARGETS } from './support.mjs';

for (const targetName of TARGETS) {
  describe(targetName, () => {
    let target;
    let client;
    before(async () => {
      target = await startTarget(targetName);
      client = target.client();
    });
    after(async () => {
      await target?.close();
    });

    test('chat.completions.create', async () => {
      const completion = await client.chat.completions.create({
        model: MODEL,
        messages: [
          { role: 'system', content: 'You are a concise assistant.' },
          { role: 'user', content: 'Draft a two-sentence reply thanking a customer for their order.' },
        ],
      });

      assert.equal(completion.object, 'chat.completion');
      assert.match(completion.id, /^chatcmpl-/);
      assert.match(completion._request_id, /^req_/);
      assert.equal(completion.choices.length, 1);
      const [choice] = completion.choices;
      assert.equal(choice.index, 0);
      assert.equal(choice.finish_reason, 'stop');
      assert.equal(choice.message.role, 'assistant');
      assert.notEqual((choice.message.content ?? '').trim(), '');
      const { usage } = completion;
      assert.ok(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
      assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    });

    test('chat.completions.create: cut by max_completion_tokens', async () => {
      const completion = await client.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: LONG_PROMPT }],
        max_completion_tokens: 5,
      });

      assert.equal(completion.choices[0].finish_reason, 'length');
      assert.ok(completion.usage.completion_tokens > 0 && completion.usage.completion_tokens <= 5);
    });

    test('chat stream with stream_options.include_usage', async () => {
      const chunks = await collect(
        await client.chat.completions.create({
          model: MODEL,
          messages: [{ role: 'user', content: LONG_PROMPT }],
          stream: true,
          stream_options: { include_usage: true },
        }),
      );

      assert.ok(chunks.length >= 3);
      assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
      assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
      const choiceChunks = chunks.slice(0, -1);
      const usageChunk = chunks.at(-1);
      assert.ok(choiceChunks.every((c) => c.choices.length === 1 && c.usage == null));
      assert.equal(choiceChunks[0].choices[0].delta.role, 'assistant');
      const text = choiceChunks.map((c) => c.choices[0].delta.content ?? '').join('');
      assert.notEqual(text.trim(), '');
      assert.deepEqual(
        choiceChunks.map((c) => c.choices[0].finish_reason).filter(Boolean),
        ['stop'],
      );
      assert.equal(choiceChunks.at(-1).choices[0].finish_reason, 'stop');

      assert.deepEqual(usageChunk.choices, []);
      const { usage } = usageChunk;
      assert.ok(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
      assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    });

    test('chat stream without include_usage has no usage chunk', async () => {
      const chunks = await collect(
        await client.chat.completions.create({
          model: MODEL,
          messages: [{ role: 'user', content: LONG_PROMPT }],
          stream: true,
        }),
      );

      assert.ok(chunks.length > 0);
      assert.ok(chunks.every((c) => c.usage == null));
      assert.ok(chunks.every((c) => c.choices.length === 1));
      assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
    });

    test('chat.completions.parse with zodResponseFormat', async () => {
      const completion = await client.chat.completions.parse({
        model: MODEL,
        messages: [{ role: 'user', content: TICKET_PROMPT }],
        response_format: zodResponseFormat(Ticket, 'ticket_classification'),
      });

      const { message, finish_reason } = completion.choices[0];
      assert.equal(finish_reason, 'stop');
      assert.ok(message.parsed, 'no parsed message');
      assert.deepEqual(message.parsed, parseTicket(message.content ?? ''));
    });
  });
}
