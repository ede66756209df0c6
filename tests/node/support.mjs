// Shared helpers for the official-SDK contract tests, and the request shapes the test files share.
//
// Every endpoint test runs against two targets (see `TARGETS` and `startTarget`):
//   "mock"    SDK → `tollgate mock` (the simulator), directly;
//   "gateway" SDK → `tollgate serve` → the same kind of simulator.
// The simulator accepts only PROVIDER_KEY, so a 200 through the gateway proves that the gateway
// substituted the provider key for the caller's tollgate key. `target.sim` is the simulator in
// both modes (for /_sim/*), and `target.upstreamAttempts` says how many simulator requests one
// SDK attempt costs for an error the gateway retries (1 directly, 3 through the gateway).
//
// Processes are the real binary ($TOLLGATE_BIN, else target/debug/tollgate) on ephemeral ports,
// ready once they print their first stdout line `listening on http://ADDR` (no sleeps, no fixed
// ports). Each gateway keeps its state in a fresh temporary data directory.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { z } from 'zod';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const STARTUP_TIMEOUT_MS = 60_000;
export const PROVIDER_KEY = 'sk-provider-contract';
const PROVIDER_KEY_VAR = 'CONTRACT_PROVIDER_KEY';
export const MODEL = 'gpt-4o';
export const TARGETS = ['mock', 'gateway'];
/** The gateway's default: 2 retries, so up to 3 upstream attempts per call. */
export const GATEWAY_UPSTREAM_ATTEMPTS = 3;

function tollgateBin() {
  const bin = process.env.TOLLGATE_BIN || join(ROOT, 'target', 'debug', 'tollgate');
  assert.ok(existsSync(bin), `tollgate binary not found at ${bin}: set TOLLGATE_BIN or run \`cargo build -p tollgate\``);
  return bin;
}

/** The environment without TOLLGATE_* settings (they would change the processes' defaults). */
function cleanEnv(extra = {}) {
  return { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TOLLGATE_'))), ...extra };
}

/** A raw HTTP call; resolves to { status, body, headers }, the body parsed as JSON, else text, else null. */
export async function httpCall(url, method, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['content-type'] = 'application/json';
  }
  const res = await fetch(url, init);
  const text = await res.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

/** Starts `tollgate ARGS` and resolves to { child, addr, stderr() } once it announced its address. */
async function startServer(args, env, what) {
  const child = spawn(tollgateBin(), args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  // readline keeps draining stdout after the first line, so the process never blocks on a full pipe.
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise((resolve, reject) => {
    const fail = (why) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${what} did not start: ${why}\nstderr:\n${stderr}`));
    };
    const timer = setTimeout(() => fail('no output line in time'), STARTUP_TIMEOUT_MS);
    lines.once('line', (line) => {
      clearTimeout(timer);
      child.removeAllListeners('exit');
      resolve(line.trim());
    });
    child.once('error', (err) => fail(err.message));
    child.once('exit', (code, signal) => fail(`exited with ${code ?? signal}`));
  });
  const prefix = 'listening on http://';
  if (!first.startsWith(prefix)) {
    child.kill('SIGKILL');
    throw new Error(`${what} announced ${JSON.stringify(first)}, expected "${prefix}ADDR"; stderr:\n${stderr}`);
  }
  return { child, addr: first.slice(prefix.length), stderr: () => stderr };
}

function running(child) {
  return child.exitCode === null && child.signalCode === null;
}

export class Mock {
  constructor({ child, addr, stderr }) {
    this.child = child;
    this.addr = addr;
    this.stderr = stderr;
    this.rootURL = `http://${addr}`;
    this.baseURL = `${this.rootURL}/v1`;
  }

  client(options = {}) {
    return new OpenAI({ baseURL: this.baseURL, apiKey: PROVIDER_KEY, timeout: 30_000, ...options });
  }

  /** A raw HTTP call; resolves to { status, body, headers }. */
  async http(method, path, body, headers = {}) {
    return httpCall(this.rootURL + path, method, body, headers);
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
    if (running(this.child)) {
      this.child.kill('SIGKILL');
    }
  }
}

/** Starts a simulator that accepts only PROVIDER_KEY. */
export async function startMock(...extraArgs) {
  const server = await startServer(
    ['mock', '--listen', '127.0.0.1:0', '--api-key', PROVIDER_KEY, ...extraArgs],
    cleanEnv(),
    'tollgate mock',
  );
  return new Mock(server);
}

/** A gateway data directory and the `tollgate keys` / `tollgate usage` commands on it. */
export class DataDir {
  constructor(path) {
    this.path = path;
  }

  /** Runs `tollgate ARGS --data-dir DIR`, asserts exit 0, returns standard output. */
  cli(...args) {
    const done = spawnSync(tollgateBin(), [...args, '--data-dir', this.path], {
      env: cleanEnv(),
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(done.status, 0, `tollgate ${args.join(' ')} exited ${done.status}: ${done.stderr}`);
    return done.stdout;
  }

  createKey({ project = 'contract', env = 'dev', role } = {}) {
    const args = ['keys', 'create', '--project', project, '--env', env, '--json'];
    if (role) {
      args.push('--role', role);
    }
    const key = JSON.parse(this.cli(...args));
    assert.deepEqual(Object.keys(key).sort(), [
      'env', 'expires_at_ms', 'id', 'key', 'lane', 'prefix', 'project', 'role',
    ]);
    assert.ok(key.key.startsWith(`tg-${env}-`) && key.key.startsWith(key.prefix), JSON.stringify(key));
    return key;
  }

  revokeKey(id) {
    this.cli('keys', 'revoke', id);
  }

  usage(by) {
    return JSON.parse(this.cli('usage', '--by', by, '--json'));
  }
}

/** One running `tollgate serve` in front of a simulator, with its own data directory. */
export class Gateway {
  constructor({ child, addr, stderr }, sim, workdir, data) {
    this.child = child;
    this.addr = addr;
    this.stderr = stderr;
    this.sim = sim;
    this.workdir = workdir;
    this.data = data;
    this.rootURL = `http://${addr}`;
    this.baseURL = `${this.rootURL}/v1`;
    this.exited = new Promise((resolve) => {
      if (!running(child)) {
        resolve(child.exitCode ?? child.signalCode);
      }
      child.once('exit', (code, signal) => resolve(code ?? signal));
    });
  }

  client(apiKey, options = {}) {
    return new OpenAI({ baseURL: this.baseURL, apiKey, timeout: 30_000, ...options });
  }

  async http(method, path, body, headers = {}) {
    return httpCall(this.rootURL + path, method, body, headers);
  }

  /** SIGTERM, then wait for the exit; resolves to the exit code (or the signal's name). */
  async terminate() {
    if (running(this.child)) {
      this.child.kill('SIGTERM');
    }
    return this.exited;
  }

  close() {
    if (running(this.child)) {
      this.child.kill('SIGKILL');
    }
    rmSync(this.workdir, { recursive: true, force: true });
  }
}

/**
 * Creates one key per role in a fresh data directory, then starts `tollgate serve` on it in
 * front of `sim` (keys created first work from the server's first request on). Resolves to
 * { gateway, keys }.
 */
export async function startGateway(sim, roles = ['member']) {
  const workdir = mkdtempSync(join(tmpdir(), 'tollgate-contract-'));
  const data = new DataDir(join(workdir, 'data'));
  const keys = roles.map((role) => data.createKey({ role }));
  const config = join(workdir, 'tollgate.toml');
  // Keep the gateway's own retries fast; their count stays the default (2).
  writeFileSync(config, '[upstream]\nretry_base_ms = 10\n');
  const server = await startServer(
    [
      'serve',
      '--listen', '127.0.0.1:0',
      '--data-dir', data.path,
      '--upstream-url', sim.baseURL,
      '--upstream-api-key', `env:${PROVIDER_KEY_VAR}`,
      '--config', config,
    ],
    cleanEnv({ [PROVIDER_KEY_VAR]: PROVIDER_KEY }),
    'tollgate serve',
  );
  return { gateway: new Gateway(server, sim, workdir, data), keys };
}

/** Where the SDK sends its calls: the simulator directly, or a gateway in front of it. */
export class Target {
  constructor(name, sim, gateway, apiKey) {
    this.name = name;
    this.sim = sim;
    this.gateway = gateway;
    this.apiKey = apiKey;
    this.rootURL = gateway ? gateway.rootURL : sim.rootURL;
    this.baseURL = `${this.rootURL}/v1`;
    this.upstreamAttempts = gateway ? GATEWAY_UPSTREAM_ATTEMPTS : 1;
  }

  client(options = {}) {
    return new OpenAI({ baseURL: this.baseURL, apiKey: this.apiKey, timeout: 30_000, ...options });
  }

  /** A raw HTTP call to the target, without a key unless `headers` carries one. */
  async http(method, path, body, headers = {}) {
    return httpCall(this.rootURL + path, method, body, headers);
  }

  /** Stops everything; a gateway gets SIGTERM and must exit 0. */
  async close() {
    try {
      if (this.gateway) {
        const status = await this.gateway.terminate();
        assert.equal(status, 0, `tollgate serve exited ${status} on SIGTERM; stderr:\n${this.gateway.stderr()}`);
      }
    } finally {
      this.gateway?.close();
      this.sim.close();
    }
  }
}

/** Starts a simulator, and for "gateway" a gateway with a member key in front of it. */
export async function startTarget(name) {
  const sim = await startMock();
  if (name === 'mock') {
    return new Target(name, sim, null, PROVIDER_KEY);
  }
  try {
    const { gateway, keys } = await startGateway(sim, ['member']);
    return new Target(name, sim, gateway, keys[0].key);
  } catch (err) {
    sim.close();
    throw err;
  }
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

/** Asserts that `promise` rejects with an instance of `cls`, and returns the error. */
export async function rejection(promise, cls) {
  let caught;
  await assert.rejects(promise, (err) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof cls, `expected ${cls.name}, got ${caught?.constructor?.name}: ${caught}`);
  return caught;
}
