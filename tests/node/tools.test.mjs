// Function-tool round trips through the official Node SDK, plain and streamed, Responses and Chat.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  MODEL,
  WEATHER_QUESTION,
  WEATHER_RESULT,
  WEATHER_TOOL_CHAT,
  WEATHER_TOOL_RESPONSES,
  collect,
  parseWeatherArguments,
  startTarget,
  TARGETS,
} from './support.mjs';

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

    test('responses: function tool round trip', async () => {
      const input = [{ role: 'user', content: WEATHER_QUESTION }];
      const first = await client.responses.create({ model: MODEL, input, tools: [WEATHER_TOOL_RESPONSES] });

      const calls = first.output.filter((item) => item.type === 'function_call');
      assert.equal(calls.length, 1, JSON.stringify(first.output));
      const [call] = calls;
      assert.equal(call.name, 'get_weather');
      assert.ok(call.call_id);
      parseWeatherArguments(call.arguments);
      assert.equal(first.output_text, '');

      input.push(...first.output, { type: 'function_call_output', call_id: call.call_id, output: WEATHER_RESULT });
      const second = await client.responses.create({ model: MODEL, input, tools: [WEATHER_TOOL_RESPONSES] });

      assert.equal(second.status, 'completed');
      assert.equal(second.output.filter((item) => item.type === 'function_call').length, 0);
      assert.notEqual(second.output_text.trim(), '');
    });

    test('responses: function tool round trip, streamed', async () => {
      const input = [{ role: 'user', content: WEATHER_QUESTION }];
      const events = await collect(
        await client.responses.create({ model: MODEL, input, tools: [WEATHER_TOOL_RESPONSES], stream: true }),
      );

      assert.equal(events[0].type, 'response.created');
      assert.deepEqual(
        events.map((e) => e.sequence_number),
        events.map((_, i) => i),
      );
      const added = events.filter((e) => e.type === 'response.output_item.added' && e.item.type === 'function_call');
      assert.equal(added.length, 1);
      assert.equal(added[0].item.name, 'get_weather');
      const argDeltas = events
        .filter((e) => e.type === 'response.function_call_arguments.delta')
        .map((e) => e.delta)
        .join('');
      const argsDone = events.filter((e) => e.type === 'response.function_call_arguments.done');
      assert.equal(argsDone.length, 1);
      assert.equal(argsDone[0].arguments, argDeltas);
      parseWeatherArguments(argDeltas);

      const last = events.at(-1);
      assert.equal(last.type, 'response.completed');
      const calls = last.response.output.filter((item) => item.type === 'function_call');
      assert.equal(calls.length, 1);
      assert.equal(calls[0].arguments, argDeltas);
      assert.ok(calls[0].call_id);

      input.push(...last.response.output, {
        type: 'function_call_output',
        call_id: calls[0].call_id,
        output: WEATHER_RESULT,
      });
      const answer = await collect(
        await client.responses.create({ model: MODEL, input, tools: [WEATHER_TOOL_RESPONSES], stream: true }),
      );

      const text = answer
        .filter((e) => e.type === 'response.output_text.delta')
        .map((e) => e.delta)
        .join('');
      assert.notEqual(text.trim(), '');
      assert.equal(answer.filter((e) => e.type.startsWith('response.function_call_arguments')).length, 0);
      assert.equal(answer.at(-1).type, 'response.completed');
    });

    test('chat: function tool round trip', async () => {
      const messages = [{ role: 'user', content: WEATHER_QUESTION }];
      const first = await client.chat.completions.create({ model: MODEL, messages, tools: [WEATHER_TOOL_CHAT] });

      const [choice] = first.choices;
      assert.equal(choice.finish_reason, 'tool_calls');
      assert.equal(choice.message.content, null);
      assert.equal(choice.message.tool_calls?.length, 1);
      const [call] = choice.message.tool_calls;
      assert.equal(call.type, 'function');
      assert.ok(call.id);
      assert.equal(call.function.name, 'get_weather');
      parseWeatherArguments(call.function.arguments);

      messages.push(choice.message, { role: 'tool', tool_call_id: call.id, content: WEATHER_RESULT });
      const second = await client.chat.completions.create({ model: MODEL, messages, tools: [WEATHER_TOOL_CHAT] });

      assert.equal(second.choices[0].finish_reason, 'stop');
      assert.ok(!second.choices[0].message.tool_calls?.length);
      assert.notEqual((second.choices[0].message.content ?? '').trim(), '');
    });

    test('chat: function tool round trip, streamed', async () => {
      const messages = [{ role: 'user', content: WEATHER_QUESTION }];
      const chunks = await collect(
        await client.chat.completions.create({ model: MODEL, messages, tools: [WEATHER_TOOL_CHAT], stream: true }),
      );

      let callId;
      let name;
      let args = '';
      const finishReasons = [];
      for (const chunk of chunks) {
        for (const choice of chunk.choices) {
          if (choice.finish_reason) {
            finishReasons.push(choice.finish_reason);
          }
          for (const toolCall of choice.delta.tool_calls ?? []) {
            assert.equal(toolCall.index, 0);
            callId = toolCall.id || callId;
            name = toolCall.function?.name || name;
            args += toolCall.function?.arguments ?? '';
          }
        }
      }
      assert.deepEqual(finishReasons, ['tool_calls']);
      assert.ok(callId);
      assert.equal(name, 'get_weather');
      parseWeatherArguments(args);

      messages.push(
        { role: 'assistant', content: null, tool_calls: [{ id: callId, type: 'function', function: { name, arguments: args } }] },
        { role: 'tool', tool_call_id: callId, content: WEATHER_RESULT },
      );
      const answer = await collect(
        await client.chat.completions.create({ model: MODEL, messages, tools: [WEATHER_TOOL_CHAT], stream: true }),
      );

      const text = answer.map((c) => c.choices[0]?.delta.content ?? '').join('');
      assert.notEqual(text.trim(), '');
      assert.equal(answer.filter((c) => c.choices[0]?.delta.tool_calls?.length).length, 0);
      assert.deepEqual(
        answer.map((c) => c.choices[0]?.finish_reason).filter(Boolean),
        ['stop'],
      );
    });

    test('chat: tool_choice naming the function forces the call', async () => {
      const completion = await client.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'Hello there.' }],
        tools: [WEATHER_TOOL_CHAT],
        tool_choice: { type: 'function', function: { name: 'get_weather' } },
      });

      const calls = completion.choices[0].message.tool_calls ?? [];
      assert.equal(calls.length, 1);
      assert.deepEqual(Object.keys(JSON.parse(calls[0].function.arguments)), ['city']);
    });
  });
}
