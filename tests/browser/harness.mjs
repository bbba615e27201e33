// What the browser tests share: a peercam process to talk to, headless Chromiums with fake
// cameras on fresh profiles, and waits that are bounded and explain themselves on failure.
// Not a test file itself (node --test only picks up *.test.mjs here).
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The checkout's root. */
export const repoRoot = path.resolve(here, '../..');

/**
 * Where a screenshot named `name` goes: target/screenshots/ on every run, so the suite
 * never rewrites a committed file; docs/ only when PEERCAM_UPDATE_SCREENSHOTS=1 asks for
 * the pictures the README shows to be made anew.
 */
export function screenshotPath(name) {
  const dir = process.env.PEERCAM_UPDATE_SCREENSHOTS === '1'
    ? path.join(repoRoot, 'docs')
    : path.join(repoRoot, 'target', 'screenshots');
  return path.join(dir, name);
}
/** The peercam binary under test; PEERCAM_BIN overrides it. */
export const BIN = path.resolve(here, process.env.PEERCAM_BIN ?? '../../target/debug/peercam');
/** The Chromium to drive; CHROMIUM_BIN overrides it. */
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
/** Call states after which the wanted one can no longer come. */
export const TERMINAL = ['ENDED', 'DECLINED', 'ERROR'];
/** A phone-sized screen, to check that the page fits one. */
export const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };

/**
 * PEERCAM_WEB_FROM_DISK=1: the pages get web/ from this checkout instead of what the binary
 * embedded when it was built (handy while working on the page without rebuilding).
 */
export const WEB_FROM_DISK = process.env.PEERCAM_WEB_FROM_DISK === '1';
const WEB_FILES = {
  '/': 'index.html', '/index.html': 'index.html', '/app.js': 'app.js', '/phonebook.js': 'phonebook.js',
  '/stats.js': 'stats.js', '/style.css': 'style.css',
};
const CONTENT_TYPES = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };

/**
 * Fails at once when the binary embeds an older web/ than this checkout (unless the pages
 * get it from disk): testing an old page would only confuse.
 */
export async function checkServedWeb(baseUrl) {
  if (WEB_FROM_DISK) return;
  for (const file of new Set(Object.values(WEB_FILES))) {
    const served = await within(10_000, `GET /${file}`, fetch(new URL(`/${file}`, baseUrl)).then(r => r.text()));
    const onDisk = await readFile(path.join(repoRoot, 'web', file), 'utf8');
    assert.ok(served === onDisk, `${BIN} serves an older web/${file} than this checkout: run \`cargo build\` (or set PEERCAM_WEB_FROM_DISK=1)`);
  }
}

/** With PEERCAM_WEB_FROM_DISK, answers the context's requests for the page's files from web/. */
export async function serveWebFromDisk(context, baseUrl) {
  if (!WEB_FROM_DISK) return;
  const origin = new URL(baseUrl).origin;
  await context.route(url => new URL(url).origin === origin && new URL(url).pathname in WEB_FILES, async route => {
    const file = WEB_FILES[new URL(route.request().url()).pathname];
    await route.fulfill({
      body: await readFile(path.join(repoRoot, 'web', file), 'utf8'),
      contentType: CONTENT_TYPES[path.extname(file).slice(1)],
    });
  });
}

/** Chromium's command line; `disableFeatures` adds to the features turned off. */
export function chromiumArgs(disableFeatures = []) {
  return [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // Offer plain host addresses instead of mDNS names: peercam need not resolve `.local`
    // names, and on a machine whose only interface is loopback the peers still connect.
    // A page served by Playwright's router (PEERCAM_WEB_FROM_DISK) has no address, so Chromium
    // would treat its WebSocket to 127.0.0.1 as a public page reaching into the local network.
    `--disable-features=${['WebRtcHideLocalIpsWithMdns', ...(WEB_FROM_DISK ? ['LocalNetworkAccessChecks'] : []), ...disableFeatures].join(',')}`,
    '--allow-loopback-in-peer-connection',
    // A moving test picture and a beeping microphone, granted without asking: people send
    // both, and the page lends its microphone to a camera with a speaker.
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  ];
}

/** A plain pause, for polling loops and letting a few more frames in. */
export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** Keeps the last `max` lines of a stream, for failure messages. */
export function tail(max = 60) {
  const lines = [];
  return {
    push(text) {
      lines.push(...text.split('\n').filter(Boolean));
      lines.splice(0, Math.max(0, lines.length - max));
    },
    toString: () => lines.join('\n') || '(nothing)',
  };
}

/** Races `promise` against a timer so no wait in these tests is unbounded. */
export async function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A peercam process (`run` or `phonebook`); its output outlives restarts, for failure messages. */
export class Peercam {
  /** `name` ("daemon", "phonebook") is how failure messages speak of it. */
  constructor(name) {
    this.name = name;
    this.err = tail();
    /** Every line it logged at WARN or ERROR, for the tests that expect none. */
    this.warnings = [];
    this.out = tail(20);
    this.child = null;
    this.exit = null;
  }

  /** Spawns `peercam ...args`; resolves with the URL it prints, as that is how it says it is ready. */
  start(args) {
    // The default log filter, as a user runs it (a RUST_LOG of the shell's would replace it),
    // unless the daemon's log is asked for (PEERCAM_SHOW_LOG, with a RUST_LOG to show).
    const env = { ...process.env };
    if (!process.env.PEERCAM_SHOW_LOG) delete env.RUST_LOG;
    const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    this.child = child;
    this.exit = null;
    let partial = '';
    child.stderr.setEncoding('utf8').on('data', chunk => {
      this.err.push(chunk);
      const lines = (partial + chunk).split('\n');
      partial = lines.pop();
      this.warnings.push(...lines.filter(line => / (WARN|ERROR) /.test(line)));
    });
    return within(30_000, `the ${this.name} printing its URL`, new Promise((resolve, reject) => {
      let pending = '';
      child.stdout.setEncoding('utf8').on('data', chunk => {
        this.out.push(chunk);
        pending += chunk;
        const lines = pending.split('\n');
        pending = lines.pop();
        for (const line of lines) {
          const url = line.match(/https?:\/\/\S+/)?.[0];
          if (url) resolve(url.replace(/[.,;)]+$/, ''));
        }
      });
      child.on('error', reject);
      child.on('exit', (code, signal) => {
        // A process stopped for a restart must not mark its successor as exited.
        if (this.child === child) this.exit = signal ?? code;
        reject(new Error(`the ${this.name} exited (${signal ?? code}) before printing its URL\nstderr:\n${this.err}`));
      });
    }));
  }

  /** SIGTERM, then SIGKILL if it lingers; a no-op if it never started or already exited. */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise(resolve => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await within(10_000, `the ${this.name} exiting`, exited).catch(() => {});
    clearTimeout(timer);
  }

  /** Its state and last output, as lines for a failure message. */
  diagnostics() {
    return [
      `--- ${this.name} ${this.exit === null ? 'running' : `exited (${this.exit})`}; stderr tail:`,
      String(this.err),
      `--- ${this.name} stdout tail:`,
      String(this.out),
    ];
  }
}

/** A suite's scratch folder, the Chromiums and peercam processes it starts, and their cleanup. */
export class Bench {
  tmp = null;
  contexts = [];
  processes = [];

  /** Makes the scratch folder; fails first with how to fix a missing binary, not with a spawn error. */
  async open(prefix) {
    assert.ok(existsSync(BIN), `no peercam binary at ${BIN}: run \`cargo build\` first or set PEERCAM_BIN`);
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: install it (apt-get install chromium) or set CHROMIUM_BIN`);
    this.tmp = await mkdtemp(path.join(tmpdir(), prefix));
  }

  /** A peercam process that `close()` stops and whose output failures show. */
  peercam(name) {
    const proc = new Peercam(name);
    this.processes.push(proc);
    return proc;
  }

  /** Chromium on a fresh profile; Playwright refuses `--user-data-dir` in launch(), hence a persistent context. */
  async browser(options = {}) {
    const profile = await mkdtemp(path.join(this.tmp, 'profile-'));
    const context = await within(30_000, 'launching Chromium', chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: chromiumArgs(),
      ...options,
    }));
    this.contexts.push(context);
    return context;
  }

  /** Runs `body`, and on failure adds the pages' state and logs and the processes' last words to the error. */
  async withDiagnostics(pages, body) {
    try {
      await body();
    } catch (err) {
      const lines = [''];
      // A page may be missing when the failure came before it was opened.
      for (const page of pages.filter(Boolean)) {
        let state = '(page gone)';
        try {
          state = await page.evaluate(() => {
            const el = document.getElementById('call-state');
            const messages = [...document.querySelectorAll('#messages li')].map(li => li.textContent);
            return `call ${el?.dataset.state} "${el?.textContent}"; connection ${document.getElementById('connection')?.dataset.state}; `
              + `reachable "${document.getElementById('reachable-status')?.textContent}"; incoming ${document.getElementById('incoming')?.hidden ? 'hidden' : 'shown'}; `
              + `messages ${JSON.stringify(messages)}`;
          });
        } catch {}
        const who = page.who ?? 'the page';
        lines.push(`--- ${who}: ${state}`, `--- ${who}'s console:`, String(page.consoleLog));
      }
      for (const proc of this.processes) lines.push(...proc.diagnostics());
      err.message += lines.join('\n');
      // Node prints an assertion's stack, made when it was thrown: it carries the lines too.
      if (typeof err.stack === 'string') err.stack += lines.join('\n');
      throw err;
    }
  }

  /** Closes the Chromiums before stopping peercam, so no page is left reconnecting to it. */
  async close() {
    for (const context of this.contexts) await within(10_000, 'closing Chromium', context.close()).catch(() => {});
    for (const proc of this.processes) await proc.stop();
    if (this.tmp) await rm(this.tmp, { recursive: true, force: true });
  }
}

/** Where a failure message names the page, when the suite drives more than one. */
const whose = page => (page.who ? `${page.who}: ` : '');

/** Opens the page at `url` and records what it logs, for failure messages; `who` names it in them. */
export async function openPage(context, url, who) {
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const consoleLog = tail(80);
  page.on('console', msg => consoleLog.push(`[${msg.type()}] ${msg.text()}`));
  page.on('pageerror', err => consoleLog.push(`[pageerror] ${err.message}`));
  page.consoleLog = consoleLog;
  page.who = who;
  await page.goto(url);
  return page;
}

/** Waits for `#call-state[data-state=wanted]`, failing at once if the call ends otherwise; resolves with its text. */
export async function waitForState(page, wanted, timeout = 15_000) {
  const handle = await page.waitForFunction(([wanted, terminal]) => {
    const state = document.getElementById('call-state')?.dataset.state;
    return (state === wanted || terminal.includes(state)) && state;
  }, [wanted, TERMINAL], { timeout });
  const state = await handle.jsonValue();
  const text = (await page.textContent('#call-state')).trim();
  assert.equal(state, wanted, `${whose(page)}expected call state ${wanted}, got ${state} ("${text}")`);
  return text;
}

/** The other end's picture and sound as this page receives them, and whether its own picture shows. */
export function sample(page) {
  return page.evaluate(async () => {
    const remote = document.getElementById('remote');
    const local = document.getElementById('local');
    const pc = window.peercamCall?.peerConnection;
    let framesDecoded = null;
    let audioPackets = null;
    if (pc && pc.signalingState !== 'closed') {
      (await pc.getStats()).forEach(report => {
        if (report.type !== 'inbound-rtp') return;
        if (report.kind === 'video') framesDecoded = (framesDecoded ?? 0) + (report.framesDecoded ?? 0);
        if (report.kind === 'audio') audioPackets = (audioPackets ?? 0) + (report.packetsReceived ?? 0);
      });
    }
    return {
      width: remote.videoWidth,
      height: remote.videoHeight,
      localWidth: local.hidden ? 0 : local.videoWidth,
      framesDecoded,
      audioPackets,
      state: document.getElementById('call-state').dataset.state,
    };
  });
}

/**
 * Polls `sample(page)` until `expect.ready(sample)` holds and `expect.moving(first, last)` holds
 * across ≥1 s; `expect.media` and `expect.wanted` word the failure messages.
 */
export async function waitForMedia(page, expect, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  let first = null;
  let last = null;
  while (Date.now() < deadline) {
    last = await sample(page);
    assert.ok(!TERMINAL.includes(last.state), `${whose(page)}the call ended while waiting for ${expect.media}: ${JSON.stringify(last)}`);
    if (!expect.ready(last)) {
      first = null;
    } else if (!first) {
      first = { ...last, at: Date.now() };
    } else if (Date.now() - first.at >= 1_000) {
      if (expect.moving(first, last)) return last;
      first = { ...last, at: Date.now() }; // stalled: start a new interval
    }
    await sleep(first ? 250 : 200);
  }
  assert.fail(`${whose(page)}no ${expect.wanted} within ${timeout} ms; last sample ${JSON.stringify(last)}, first good one ${JSON.stringify(first)}`);
}

/** Fails if the page scrolls sideways, which on a phone hides part of it. */
export async function noSidewaysOverflow(page) {
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
  assert.ok(overflow <= 0, `${whose(page)}the page is ${overflow}px wider than the phone screen`);
}

/**
 * Serves `files` (URL path → `{ file }` on disk or `{ body }`, with `type`) on 127.0.0.1, for
 * pages that load stock npm clients; resolves with `{ url, close }`.
 */
export async function serveFiles(files) {
  const { createServer } = await import('node:http');
  const { readFile } = await import('node:fs/promises');
  const server = createServer(async (req, res) => {
    const entry = files[new URL(req.url, 'http://x').pathname];
    if (!entry) {
      res.writeHead(404).end('not found');
      return;
    }
    const body = entry.body ?? await readFile(entry.file);
    res.writeHead(200, { 'content-type': entry.type, 'cache-control': 'no-store' }).end(body);
  });
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    close: () => new Promise(resolve => { server.closeAllConnections(); server.close(resolve); }),
  };
}

/** `peercam status` on the control socket, parsed; `{}` while the daemon does not answer. */
export function daemonStatus(sock) {
  return new Promise(resolve => {
    execFile(BIN, ['status', '--control', sock], { timeout: 10_000 }, (err, stdout) => {
      try {
        resolve(err ? {} : JSON.parse(stdout));
      } catch {
        resolve({});
      }
    });
  });
}

/** `peercam press …` on the control socket, retried while the daemon has nothing ringing yet. */
export async function press(sock, ...args) {
  let last;
  for (let attempt = 0; attempt < 20; attempt++) {
    last = await new Promise(resolve => {
      execFile(BIN, ['press', ...args, '--control', sock], { timeout: 10_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? (err.code ?? err.signal) : 0, stdout, stderr });
      });
    });
    if (last.code === 0) return;
    await sleep(300);
  }
  assert.fail(`peercam press ${args.join(' ')} kept failing (${last.code}): ${last.stderr || last.stdout}`);
}

/**
 * One line to the daemon's control socket, as `peercam press` and `status` write it, without
 * starting a process (for timings); resolves with the reply line (`ok …` or `error …`).
 */
export async function controlLine(sock, line) {
  const { createConnection } = await import('node:net');
  return within(10_000, `the control socket's reply to ${JSON.stringify(line)}`, new Promise((resolve, reject) => {
    const conn = createConnection(sock);
    let reply = '';
    conn.setEncoding('utf8');
    conn.on('connect', () => conn.write(`${line}\n`));
    conn.on('data', chunk => {
      reply += chunk;
      const end = reply.indexOf('\n');
      if (end >= 0) {
        conn.destroy();
        resolve(reply.slice(0, end));
      }
    });
    conn.on('error', reject);
    conn.on('close', () => reject(new Error(`the control socket closed without a reply (${JSON.stringify(reply)})`)));
  }));
}

/** Polls the daemon's status until `check(status)` holds; fails with `what` and the last status. */
export async function waitForStatus(sock, what, check, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  let status = {};
  while (Date.now() < deadline) {
    status = await daemonStatus(sock);
    if (check(status)) return status;
    await sleep(200);
  }
  assert.fail(`the daemon's status never showed ${what} within ${timeout} ms: ${JSON.stringify(status)}`);
}

/** Frames decoded so far by the page's `window.pc` (a stock client's RTCPeerConnection). */
export function framesDecoded(page, expression = 'window.pc') {
  return page.evaluate(async expression => {
    // eslint-disable-next-line no-eval
    const pc = (0, eval)(expression);
    let frames = 0;
    if (!pc || pc.signalingState === 'closed') return -1;
    (await pc.getStats()).forEach(report => {
      if (report.type === 'inbound-rtp' && report.kind === 'video') frames += report.framesDecoded ?? 0;
    });
    return frames;
  }, expression);
}
