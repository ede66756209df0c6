// Shared helpers for the official-SDK contract tests: start the real `tollgate mock`
// binary ($TOLLGATE_BIN, else target/debug/tollgate) on an ephemeral port, wait for its
// first stdout line `listening on http://ADDR` (no sleeps, no fixed ports), and talk to
// its control API (/_sim/*). Also the request shapes shared by the test files.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { z } from 'zod';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const STARTUP_TIMEOUT_MS = 60_000;
export const API_KEY = 'sk-test-contract';
export const MODEL = 'gpt-4o';

export class Mock {
  constructor(child, addr) {
    this.child = child;
    this.addr = addr;
    this.rootURL = `http://${addr}`;
    this.baseURL = `${this.rootURL}/v1`;
  }

  client(options = {}) {
    return new OpenAI({ baseURL: this.baseURL, apiKey: API_KEY, timeout: 30_000, ...options });
  }

  /** A raw HTTP call; resolves to { status, body }, the body parsed as JSON, else as text, else null. */
  async http(method, path, body, headers = {}) {
    const init = { method, headers: { ...headers } };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['content-type'] = 'application/json';
    }
    const res = await fetch(this.rootURL + path, init);
    const text = await res.text();
    let parsed = null;
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = text;
      }
    }
    return { status: res.status, body: parsed };
  }

  async control(method, path, body) {
    const { status, body: answer } = await this.http(method, path, body);
    assert.ok(status >= 200 && status < 300, `${method} ${path} answered ${status}: ${JSON.stringify(answer)}`);
    return answer;
  }

  /** Clears faults, recorded requests and rate-limit counters. */
  async reset() {
    await this.control('POST', '/_sim/reset');
  }

  /** What the mock received (GET /_sim/requests), optionally only for one path. */
  async recorded(path) {
    const { data } = await this.control('GET', '/_sim/requests');
    return data.filter((r) => path === undefined || r.path === path);
  }

  async queueFaults(fault) {
    assert.deepEqual(await this.control('POST', '/_sim/faults', fault), { queued: fault.count });
  }

  close() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
    }
  }
}

export async function startMock(...extraArgs) {
  const bin = process.env.TOLLGATE_BIN || join(ROOT, 'target', 'debug', 'tollgate');
  assert.ok(existsSync(bin), `tollgate binary not found at ${bin}: set TOLLGATE_BIN or run \`cargo build -p tollgate\``);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TOLLGATE_MOCK_')));
  const child = spawn(bin, ['mock', '--listen', '127.0.0.1:0', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env,
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  // readline keeps draining stdout after the first line, so the mock never blocks on a full pipe.
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise((resolve, reject) => {
    const fail = (why) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`tollgate mock did not start: ${why}\nstderr:\n${stderr}`));
    };
    const timer = setTimeout(() => fail('no output line in time'), STARTUP_TIMEOUT_MS);
    lines.once('line', (line) => {
      clearTimeout(timer);
      resolve(line.trim());
    });
    child.once('error', (err) => fail(err.message));
    child.once('exit', (code, signal) => fail(`exited with ${code ?? signal}`));
  });
  const prefix = 'listening on http://';
  if (!first.startsWith(prefix)) {
    child.kill('SIGKILL');
    throw new Error(`tollgate mock announced ${JSON.stringify(first)}, expected "${prefix}ADDR"; stderr:\n${stderr}`);
  }
  return new Mock(child, first.slice(prefix.length));
}

/** A recorded request header, looked up case-insensitively. */
export function header(record, name) {
  const entry = Object.entries(record.headers).find(([k]) => k.toLowerCase() === name.toLowerCase());
  return entry?.[1];
}

export const LONG_PROMPT =
  'Explain in several detailed paragraphs how a toll gate on a motorway works: how vehicles are ' +
  'detected, how the fee is computed, how payment is taken, and what happens when a payment fails.';

export const TICKET_PROMPT = "Classify this helpdesk ticket: 'I was charged twice for my subscription this month.'";

/** The helpdesk classifier's answer, as a zod schema (strict: no other keys). */
export const Ticket = z
  .object({
    category: z.string(),
    priority: z.enum(['low', 'medium', 'high']),
    needs_human: z.boolean(),
  })
  .strict();

export const TICKET_SCHEMA = {
  type: 'object',
  properties: {
    category: { type: 'string' },
    priority: { type: 'string', enum: ['low', 'medium', 'high'] },
    needs_human: { type: 'boolean' },
  },
  required: ['category', 'priority', 'needs_human'],
  additionalProperties: false,
};

const WEATHER_PARAMETERS = {
  type: 'object',
  properties: { city: { type: 'string', description: 'City name, e.g. Paris' } },
  required: ['city'],
  additionalProperties: false,
};

/** Responses API function tools are flat ... */
export const WEATHER_TOOL_RESPONSES = {
  type: 'function',
  name: 'get_weather',
  description: 'Current weather for a city.',
  parameters: WEATHER_PARAMETERS,
  strict: true,
};

/** ... Chat Completions nests them under `function`. */
export const WEATHER_TOOL_CHAT = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather for a city.',
    parameters: WEATHER_PARAMETERS,
    strict: true,
  },
};

export const WEATHER_QUESTION = 'What is the weather in Paris right now?';
export const WEATHER_RESULT = JSON.stringify({ city: 'Paris', temperature_c: 18, conditions: 'light rain' });

/** Parses JSON text and checks it against the classifier schema (types, enum, no extra keys). */
export function parseTicket(text) {
  return Ticket.parse(JSON.parse(text));
}

/** Parses a get_weather call's JSON arguments and checks them against its parameter schema. */
export function parseWeatherArguments(args) {
  return z.object({ city: z.string() }).strict().parse(JSON.parse(args));
}

export function assertResponseUsage(usage) {
  assert.ok(usage, 'response has no usage');
  assert.ok(usage.input_tokens > 0);
  assert.ok(usage.output_tokens > 0);
  assert.equal(usage.total_tokens, usage.input_tokens + usage.output_tokens);
  assert.ok(usage.input_tokens_details.cached_tokens >= 0);
  assert.ok(usage.output_tokens_details.reasoning_tokens >= 0);
}

/** Collects every item of an async iterable (an SDK stream). */
export async function collect(stream) {
  const items = [];
  for await (const item of stream) {
    items.push(item);
  }
  return items;
}
