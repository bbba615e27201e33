// Two people call each other through a real peercam phonebook, in two headless Chromiums
// with fake cameras and microphones: both go online, Bob calls Alice, the incoming prompt,
// accept (video and sound both ways, text over the data channel), decline, do not disturb,
// and a taken name. Run with `npm test` in this folder after `cargo build`; PEERCAM_BIN overrides the
// binary's path.
//
// The phonebook serves the page embedded into the binary at build time. A binary older
// than web/ fails the run at once; PEERCAM_WEB_FROM_DISK=1 serves web/ from this checkout
// instead (handy while working on the page without rebuilding).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '../..');
const webDir = path.join(repoRoot, 'web');
const BIN = path.resolve(here, process.env.PEERCAM_BIN ?? '../../target/debug/peercam');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const WEB_FROM_DISK = process.env.PEERCAM_WEB_FROM_DISK === '1';
const SCREENSHOT_INCOMING = path.join(repoRoot, 'docs', 'screenshot-incoming.png');
const SCREENSHOT_CALL = path.join(repoRoot, 'docs', 'screenshot-people.png');
const TERMINAL = ['ENDED', 'DECLINED', 'ERROR'];
const WEB_FILES = { '/': 'index.html', '/index.html': 'index.html', '/app.js': 'app.js', '/phonebook.js': 'phonebook.js', '/style.css': 'style.css' };
const CONTENT_TYPES = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  // Offer plain host addresses instead of mDNS names, so that two browsers on a machine
  // whose only interface is loopback can still reach each other. A page served by
  // Playwright's router (PEERCAM_WEB_FROM_DISK) has no address, so Chromium would treat its
  // WebSocket to 127.0.0.1 as a public page reaching into the local network.
  `--disable-features=WebRtcHideLocalIpsWithMdns${WEB_FROM_DISK ? ',LocalNetworkAccessChecks' : ''}`,
  '--allow-loopback-in-peer-connection',
  // A moving test picture and a beeping microphone, granted without asking.
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
];

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** Keeps the last `max` lines of a stream, for failure messages. */
function tail(max = 60) {
  const lines = [];
  return {
    push(text) {
      lines.push(...text.split('\n').filter(Boolean));
      lines.splice(0, Math.max(0, lines.length - max));
    },
    toString: () => lines.join('\n') || '(nothing)',
  };
}

/** Races `promise` against a timer so no wait in this file is unbounded. */
async function within(ms, what, promise) {
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

describe('people calling people through the phonebook', () => {
  const serverErr = tail();
  const serverOut = tail(20);
  let tmp;
  let server;
  let serverExit = null;
  let baseUrl;
  const contexts = [];
  /** Alice goes online and is called; Bob calls her. */
  let alice;
  let bob;

  before(async () => {
    assert.ok(existsSync(BIN), `no peercam binary at ${BIN}: run \`cargo build\` first or set PEERCAM_BIN`);
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: install it (apt-get install chromium) or set CHROMIUM_BIN`);
    tmp = await mkdtemp(path.join(tmpdir(), 'peercam-people-'));
    baseUrl = await startPhonebook('127.0.0.1:0');

    if (!WEB_FROM_DISK) {
      // Testing an old page would only confuse: say so plainly instead.
      for (const file of ['index.html', 'app.js', 'phonebook.js', 'style.css']) {
        const served = await within(10_000, `GET /${file}`, fetch(new URL(`/${file}`, baseUrl)).then(r => r.text()));
        const onDisk = await readFile(path.join(webDir, file), 'utf8');
        assert.ok(served === onDisk, `${BIN} serves an older web/${file} than this checkout: run \`cargo build\` (or set PEERCAM_WEB_FROM_DISK=1)`);
      }
    }

    alice = await openPage(await browser(), 'alice');
    bob = await openPage(await browser(), 'bob');
  });

  after(async () => {
    for (const context of contexts) await within(10_000, 'closing Chromium', context.close()).catch(() => {});
    await stopPhonebook();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  /** Starts `peercam phonebook --listen listen`; resolves with the page's URL it prints. */
  async function startPhonebook(listen) {
    const child = spawn(BIN, ['phonebook', '--listen', listen], { stdio: ['ignore', 'pipe', 'pipe'] });
    server = child;
    serverExit = null;
    child.stderr.setEncoding('utf8').on('data', chunk => serverErr.push(chunk));
    return within(30_000, 'the phonebook printing its URL', new Promise((resolve, reject) => {
      let pending = '';
      child.stdout.setEncoding('utf8').on('data', chunk => {
        serverOut.push(chunk);
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
        if (server === child) serverExit = signal ?? code;
        reject(new Error(`the phonebook exited (${signal ?? code}) before printing its URL\nstderr:\n${serverErr}`));
      });
    }));
  }

  async function stopPhonebook() {
    const child = server;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise(resolve => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await within(10_000, 'the phonebook exiting', exited).catch(() => {});
    clearTimeout(timer);
  }

  /** The phonebook's list, as scripts see it. */
  async function apiCallees() {
    const response = await within(5_000, 'GET /api/callees', fetch(new URL('/api/callees', baseUrl)));
    return response.json();
  }

  /** A phone-sized Chromium on a fresh profile, so each person has a fake camera of their own. */
  async function browser() {
    const profile = await mkdtemp(path.join(tmp, 'profile-'));
    const context = await within(30_000, 'launching Chromium', chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    }));
    contexts.push(context);
    if (WEB_FROM_DISK) {
      await context.route(url => new URL(url).origin === new URL(baseUrl).origin && new URL(url).pathname in WEB_FILES, async route => {
        const file = WEB_FILES[new URL(route.request().url()).pathname];
        await route.fulfill({
          body: await readFile(path.join(webDir, file), 'utf8'),
          contentType: CONTENT_TYPES[path.extname(file).slice(1)],
        });
      });
    }
    return context;
  }

  /** Opens the phonebook page and records what it logs, for failure messages. */
  async function openPage(context, who) {
    const page = await context.newPage();
    page.setDefaultTimeout(15_000);
    const consoleLog = tail(80);
    page.on('console', msg => consoleLog.push(`[${msg.type()}] ${msg.text()}`));
    page.on('pageerror', err => consoleLog.push(`[pageerror] ${err.message}`));
    page.consoleLog = consoleLog;
    page.who = who;
    await page.goto(baseUrl);
    return page;
  }

  /** Runs `body`, and on failure adds both pages' state and logs and the phonebook's last words. */
  async function withDiagnostics(body) {
    try {
      await body();
    } catch (err) {
      const lines = [''];
      for (const page of [alice, bob].filter(Boolean)) {
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
        lines.push(`--- ${page.who}: ${state}`, `--- ${page.who}'s console:`, String(page.consoleLog));
      }
      lines.push(
        `--- phonebook ${serverExit === null ? 'running' : `exited (${serverExit})`}; stderr tail:`,
        String(serverErr),
        '--- phonebook stdout tail:',
        String(serverOut),
      );
      err.message += lines.join('\n');
      throw err;
    }
  }

  /** Waits for `#call-state[data-state=wanted]`; fails at once if the call ends otherwise. */
  async function waitForState(page, wanted, timeout = 15_000) {
    const handle = await page.waitForFunction(([wanted, terminal]) => {
      const state = document.getElementById('call-state')?.dataset.state;
      return (state === wanted || terminal.includes(state)) && state;
    }, [wanted, TERMINAL], { timeout });
    const state = await handle.jsonValue();
    const text = (await page.textContent('#call-state')).trim();
    assert.equal(state, wanted, `${page.who}: expected call state ${wanted}, got ${state} ("${text}")`);
    return text;
  }

  /** Waits until `#messages` has a line equal to `line`. */
  async function waitForMessage(page, line, timeout = 5_000) {
    try {
      await page.waitForFunction(
        line => [...document.querySelectorAll('#messages li')].some(li => li.textContent === line),
        line, { timeout },
      );
    } catch (err) {
      const lines = await page.$$eval('#messages li', lis => lis.map(li => li.textContent));
      assert.fail(`${page.who}: no message "${line}" within ${timeout} ms; the log has ${JSON.stringify(lines)} (${err.message.split('\n')[0]})`);
    }
  }

  /** Sends `text` from the page's message field, once the data channel lets it. */
  async function sendMessage(page, text) {
    await page.waitForSelector('#message-send:not([disabled])', { timeout: 10_000 });
    await page.fill('#message-input', text);
    await page.click('#message-send');
    await waitForMessage(page, `You: ${text}`, 2_000);
  }

  /** The other end's picture and sound as this page receives them. */
  function sample(page) {
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

  /** Polls until the remote video has a size, frames keep being decoded across ≥1 s, and sound packets arrive. */
  async function waitForMedia(page, timeout = 20_000) {
    const deadline = Date.now() + timeout;
    let first = null;
    let last = null;
    while (Date.now() < deadline) {
      last = await sample(page);
      assert.ok(!TERMINAL.includes(last.state), `${page.who}: the call ended while waiting for media: ${JSON.stringify(last)}`);
      const good = last.width > 0 && last.height > 0 && last.framesDecoded > 0 && last.audioPackets > 0 && last.localWidth > 0;
      if (!good) {
        first = null;
      } else if (!first) {
        first = { ...last, at: Date.now() };
      } else if (Date.now() - first.at >= 1_000) {
        if (last.framesDecoded > first.framesDecoded && last.audioPackets > first.audioPackets) return last;
        first = { ...last, at: Date.now() }; // stalled: start a new interval
      }
      await sleep(first ? 250 : 200);
    }
    assert.fail(`${page.who}: no moving video with sound (and own picture) within ${timeout} ms; last sample ${JSON.stringify(last)}, first good one ${JSON.stringify(first)}`);
  }

  async function noSidewaysOverflow(page) {
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
    assert.ok(overflow <= 0, `${page.who}: the page is ${overflow}px wider than the phone screen`);
  }

  /** Bob presses Call next to alice and waits for it to ring. */
  async function bobCallsAlice() {
    await bob.click('li[data-callee="alice"] button.call', { timeout: 10_000 });
    await waitForState(bob, 'RINGING');
  }

  /** Turns on the page's camera and microphone and registers `name`. */
  async function goOnline(page, yourName, name) {
    await page.fill('#caller-name', yourName);
    await page.fill('#reachable-name', name);
    await page.click('#go-online');
    await page.waitForSelector('#go-online[aria-pressed="true"]', { timeout: 15_000 });
    assert.match(await page.textContent('#reachable-status'), new RegExp(`Online as ${name}: .*camera and microphone are on`));
  }

  test('going online: alice appears in bob\'s list as a browser', { timeout: 60_000 }, async () => {
    await withDiagnostics(async () => {
      // Bob is online too: calling a person sends your camera and microphone only then.
      await goOnline(alice, 'Alice', 'alice');
      await goOnline(bob, 'Bob', 'bob');
      const entry = bob.locator('li[data-callee="alice"]');
      await entry.waitFor({ timeout: 10_000 });
      assert.equal(await entry.getAttribute('data-kind'), 'browser');
      assert.match(await entry.locator('.callee-meta').textContent(), /^browser · Alice$/);
      assert.equal((await entry.locator('.badge').textContent()).trim(), 'available');
      // Her own entry is marked, and she cannot call herself.
      const own = alice.locator('li[data-callee="alice"]');
      await own.waitFor({ timeout: 10_000 });
      assert.equal(await own.locator('button.call').isDisabled(), true);
    });
  });

  test('accept: both see and hear each other, chat, then bob hangs up', { timeout: 120_000 }, async () => {
    await withDiagnostics(async () => {
      await bobCallsAlice();
      await alice.waitForSelector('#incoming:not([hidden])', { timeout: 10_000 });
      assert.equal((await alice.textContent('#incoming-caller')).trim(), 'Bob');
      await noSidewaysOverflow(alice);
      await mkdir(path.dirname(SCREENSHOT_INCOMING), { recursive: true });
      await alice.screenshot({ path: SCREENSHOT_INCOMING });

      await alice.click('#accept');
      await alice.waitForSelector('#incoming', { state: 'hidden', timeout: 5_000 });
      assert.equal(await waitForState(alice, 'ESTABLISHED'), 'Connected');
      assert.equal(await waitForState(bob, 'ESTABLISHED'), 'Connected');
      assert.equal(await alice.evaluate(() => window.peercamCall.isIncoming), true);
      assert.equal(await bob.evaluate(() => window.peercamCall.isIncoming), false);
      await Promise.all([waitForMedia(alice), waitForMedia(bob)]);

      await sendMessage(bob, 'hello alice');
      await waitForMessage(alice, 'Bob: hello alice');
      await sendMessage(alice, 'hi bob');
      await waitForMessage(bob, 'alice: hi bob');

      await sleep(500); // a few more frames, so the pictures are not the first ones
      await noSidewaysOverflow(bob);
      await noSidewaysOverflow(alice);
      await bob.screenshot({ path: SCREENSHOT_CALL });

      await bob.click('#hangup');
      assert.equal(await waitForState(bob, 'ENDED', 10_000), 'Ended: caller hung up');
      assert.equal(await waitForState(alice, 'ENDED', 10_000), 'Ended: caller hung up');
      // Sending on an ended call fails plainly rather than vanishing.
      const error = await bob.evaluate(() => { try { window.peercamCall.send('late'); return null; } catch (err) { return err.message; } });
      assert.match(error ?? '(no error)', /data channel is not open/);
      await bob.click('#dismiss');
      await alice.click('#dismiss');
    });
  });

  test('decline: bob sees alice\'s reason', { timeout: 60_000 }, async () => {
    await withDiagnostics(async () => {
      await bobCallsAlice();
      await alice.waitForSelector('#incoming:not([hidden])', { timeout: 10_000 });
      await alice.click('#decline');
      assert.equal(await waitForState(bob, 'DECLINED', 10_000), 'Declined: Declined');
      assert.equal(await alice.isHidden('#incoming'), true);
      // The API refuses to accept what was declined.
      const error = await alice.evaluate(() => {
        const call = window.peercamCall;
        if (!call?.isIncoming || call.state !== 'DECLINED') return `peercamCall is ${call?.isIncoming ? 'incoming' : 'outgoing'} in ${call?.state}`;
        try { call.accept(null); return 'accept() did not throw'; } catch (err) { return err.message; }
      });
      assert.match(error, /cannot accept a call that is DECLINED/);
      await bob.click('#dismiss');
    });
  });

  test('do not disturb: a grey badge, Call stays enabled, the call is declined', { timeout: 60_000 }, async () => {
    await withDiagnostics(async () => {
      await alice.check('#dnd');
      const entry = bob.locator('li[data-callee="alice"]');
      await bob.waitForSelector('li[data-callee="alice"] .badge[data-presence="dnd"]', { timeout: 10_000 });
      assert.equal((await entry.locator('.badge').textContent()).trim(), 'do not disturb');
      assert.equal(await entry.locator('button.call').isEnabled(), true);
      await bob.click('li[data-callee="alice"] button.call');
      assert.equal(await waitForState(bob, 'DECLINED', 10_000), 'Declined: Do not disturb');
      assert.equal(await alice.isHidden('#incoming'), true);
      await bob.click('#dismiss');
      await alice.uncheck('#dnd');
      await bob.waitForSelector('li[data-callee="alice"] .badge[data-presence="available"]', { timeout: 10_000 });
    });
  });

  test('names: a taken name is refused with name_taken, a bad one with invalid_name', { timeout: 60_000 }, async () => {
    await withDiagnostics(async () => {
      const results = await bob.evaluate(async () => {
        const { Phonebook } = await import('/phonebook.js');
        const pb = new Phonebook(undefined, { agent: 'peercam-test' });
        const attempt = name => Promise.race([
          pb.registerCallee(name, { kind: 'browser' }, call => call.decline('test')).then(got => `registered ${got}`, err => err.code),
          new Promise(resolve => setTimeout(() => resolve('no answer within 10 s'), 10_000)),
        ]);
        try {
          return [await attempt('alice'), await attempt('not/valid'), await attempt('carol')];
        } finally {
          pb.close();
        }
      });
      assert.deepEqual(results, ['name_taken', 'invalid_name', 'registered carol']);
      // Alice still holds her name.
      assert.equal(await bob.locator('li[data-callee="alice"]').count(), 1);
    });
  });

  test('reconnect: after a phonebook restart both names are back, alice still on do not disturb', { timeout: 60_000 }, async () => {
    await withDiagnostics(async () => {
      await alice.check('#dnd');
      await bob.waitForSelector('li[data-callee="alice"] .badge[data-presence="dnd"]', { timeout: 10_000 });
      await stopPhonebook();
      await alice.waitForSelector('#connection[data-state="closed"]', { timeout: 10_000 });
      assert.match(await alice.textContent('#reachable-status'), /Reconnecting/);
      // Same address: the pages reconnect to where they were.
      await startPhonebook(new URL(baseUrl).host);
      const deadline = Date.now() + 20_000;
      let list = [];
      for (;;) {
        list = await apiCallees().catch(() => []);
        const presence = Object.fromEntries(list.map(c => [c.name, c.presence]));
        if (presence.alice === 'dnd' && presence.bob === 'available') break;
        assert.ok(Date.now() < deadline, `the names did not come back within 20 s; the phonebook lists ${JSON.stringify(list)}`);
        await sleep(250);
      }
      await alice.waitForSelector('#connection[data-state="open"]', { timeout: 5_000 });
      assert.match(await alice.textContent('#reachable-status'), /Online as alice/);
      await bob.waitForSelector('li[data-callee="alice"] .badge[data-presence="dnd"]', { timeout: 5_000 });
      assert.equal(await alice.isChecked('#dnd'), true);
    });
  });
});
