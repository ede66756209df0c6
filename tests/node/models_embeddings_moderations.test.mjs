// Models, embeddings (SDK default base64 on the wire) and moderations through the official Node SDK.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { NotFoundError } from 'openai';
import { startTarget, TARGETS } from './support.mjs';

const EMBEDDING_MODEL = 'text-embedding-3-small';

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

    const embed = async (input, extra = {}) =>
      (await client.embeddings.create({ model: EMBEDDING_MODEL, input, ...extra })).data[0].embedding;

    test('models.list', async () => {
      const models = [];
      for await (const model of client.models.list()) {
        models.push(model);
      }

      const ids = new Set(models.map((m) => m.id));
      for (const id of ['gpt-4o', 'gpt-4o-2024-08-06', 'text-embedding-3-small', 'omni-moderation-latest']) {
        assert.ok(ids.has(id), `models.list lacks ${id}`);
      }
      assert.equal(ids.size, models.length, 'duplicate model ids');
      assert.ok(models.every((m) => m.object === 'model' && Number.isInteger(m.created) && m.owned_by));
    });

    test('models.retrieve', async () => {
      const model = await client.models.retrieve('gpt-4o');
      assert.equal(model.id, 'gpt-4o');
      assert.equal(model.object, 'model');
      assert.ok(model.owned_by);
    });

    test('models.retrieve: unknown model is NotFoundError', async () => {
      await assert.rejects(client.models.retrieve('no-such-model'), (err) => {
        assert.ok(err instanceof NotFoundError, String(err));
        assert.equal(err.status, 404);
        assert.equal(err.code, 'model_not_found');
        return true;
      });
    });

    test('embeddings: SDK default asks for base64, gets 1536 floats', async () => {
      await sim.reset();
      const result = await client.embeddings.create({ model: EMBEDDING_MODEL, input: 'The quick brown fox' });

      const records = await sim.recorded('/v1/embeddings');
      assert.equal(records.length, 1);
      assert.equal(records[0].body.encoding_format, 'base64', 'the SDK asks for base64 unless told otherwise');
      assert.equal(result.object, 'list');
      assert.ok(result.model.startsWith(EMBEDDING_MODEL));
      assert.equal(result.data.length, 1);
      assert.equal(result.data[0].index, 0);
      const vector = result.data[0].embedding;
      assert.equal(vector.length, 1536);
      assert.ok(vector.every((x) => typeof x === 'number' && Number.isFinite(x)));
      const norm = Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0));
      assert.ok(Math.abs(norm - 1) < 1e-3, `norm ${norm}`);
      assert.ok(result.usage.prompt_tokens > 0);
      assert.equal(result.usage.total_tokens, result.usage.prompt_tokens);
    });

    test('embeddings: base64 string on the wire, decoded by the SDK', async () => {
      const request = { model: EMBEDDING_MODEL, input: 'The quick brown fox' };
      const raw = await (await client.embeddings.create(request).asResponse()).json();
      const wire = raw.data[0].embedding;
      assert.equal(typeof wire, 'string', 'asked for base64, the answer must be a base64 string');
      const bytes = Buffer.from(wire, 'base64');
      assert.equal(bytes.length, 1536 * 4);
      const floats = Array.from(new Float32Array(bytes.buffer, bytes.byteOffset, 1536));
      assert.deepEqual(floats, await embed(request.input));
    });

    test('embeddings: stable per input, different across inputs', async () => {
      const a1 = await embed('tollgate');
      const a2 = await embed('tollgate');
      const b = await embed('a different sentence');

      assert.deepEqual(a1, a2);
      assert.notDeepEqual(a1, b);
    });

    test('embeddings: float encoding carries the same vector', async () => {
      const asBase64 = await embed('same text');
      const asFloat = await embed('same text', { encoding_format: 'float' });

      assert.equal(asFloat.length, 1536);
      assert.equal(asBase64.length, 1536);
      // base64 carries float32; the float answer may carry more digits of the same values.
      asFloat.forEach((x, i) => assert.ok(Math.abs(x - asBase64[i]) <= 1e-7 + 1e-5 * Math.abs(x), `index ${i}`));
    });

    test('moderations: benign input is not flagged', async () => {
      const result = await client.moderations.create({
        model: 'omni-moderation-latest',
        input: 'I love sunny days at the beach.',
      });

      assert.match(result.id, /^modr-/);
      assert.equal(result.results.length, 1);
      const [verdict] = result.results;
      assert.equal(verdict.flagged, false);
      assert.ok(!Object.values(verdict.categories).some(Boolean));
    });

    test('moderations: "I will kill you" is flagged for violence', async () => {
      const result = await client.moderations.create({ model: 'omni-moderation-latest', input: 'I will kill you' });

      const [verdict] = result.results;
      assert.equal(verdict.flagged, true);
      assert.equal(verdict.categories.violence, true);
      assert.ok(verdict.category_scores.violence > 0.5);
      assert.ok('self-harm/intent' in verdict.categories && 'illicit/violent' in verdict.categories);
    });
  });
}
