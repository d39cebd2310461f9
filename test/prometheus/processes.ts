// Child processes for the live Prometheus test: started with spawn, their output kept for the failure message,
// stopped by their own PID (SIGTERM, then SIGKILL) and awaited, in teardown too.
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Child {
  readonly name: string;
  readonly process: ChildProcess;
  /** Everything it wrote, stdout and stderr interleaved. */
  output(): string;
  readonly exited: Promise<void>;
  stop(): Promise<void>;
}

export function start(name: string, command: string, args: readonly string[]): Child {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    child.once('exit', () => resolve());
    child.once('error', (err) => {
      out += `\nspawn failed: ${err.message}`;
      resolve();
    });
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    child.kill('SIGTERM');
    const done = await Promise.race([exited.then(() => true), sleep(10_000, false)]);
    if (!done) {
      child.kill('SIGKILL');
      await exited;
    }
  };
  return { name, process: child, output: () => out, exited, stop };
}

/** A port free on 127.0.0.1 now (the kernel's choice; a race with other programs is possible but unlikely). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

/** One HTTP request on a fresh connection (optionally from a given local address), never throwing: status 0 on a network error. */
export function fetchText(url: string, options: { method?: string; headers?: Record<string, string>; body?: string; localAddress?: string; timeoutMs?: number } = {}): Promise<Answer> {
  return new Promise((resolve) => {
    const req = http.request(url, { method: options.method ?? 'GET', headers: options.headers, agent: false, localAddress: options.localAddress, timeout: options.timeoutMs ?? 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (err) => resolve({ status: 0, headers: {}, text: String(err) }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) => resolve({ status: 0, headers: {}, text: String(err) }));
    req.end(options.body);
  });
}

/**
 * Poll until `check` returns something other than undefined/false, at most `deadlineMs` (generous: the machine is
 * shared). Throws with `what` and the last value seen.
 */
export async function until<T>(what: string, check: () => Promise<T | undefined | false>, deadlineMs = 90_000, everyMs = 250): Promise<T> {
  const end = Date.now() + deadlineMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
      last = value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`gave up after ${deadlineMs / 1000} s waiting for ${what} (last: ${String(last)})`);
    await sleep(everyMs);
  }
}
