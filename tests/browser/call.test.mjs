// Calls a real peercam daemon from headless Chromium: accept, decline, and a phone-sized
// screen. Run with `npm test` in this folder after `cargo build`; PEERCAM_BIN overrides
// the daemon's path.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '../..');
const BIN = path.resolve(here, process.env.PEERCAM_BIN ?? '../../target/debug/peercam');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const CALLEE = 'test-cam';
const SCREENSHOT = path.join(repoRoot, 'docs', 'screenshot-phone.png');
const TERMINAL = ['ENDED', 'DECLINED', 'ERROR'];

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  // Offer plain host addresses instead of mDNS names: the daemon need not resolve
  // `.local` names, and a sandbox whose only interface is loopback can still connect.
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--allow-loopback-in-peer-connection',
  // The camera has a speaker: the page offers its (fake) microphone for the intercom.
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
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

describe('peercam in a real browser', () => {
  const daemonErr = tail();
  const daemonOut = tail(20);
  let tmp;
  let sock;
  let daemon;
  let daemonExit = null;
  let baseUrl;
  const contexts = [];

  before(async () => {
    assert.ok(existsSync(BIN), `no peercam binary at ${BIN}: run \`cargo build\` first or set PEERCAM_BIN`);
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: install it (apt-get install chromium) or set CHROMIUM_BIN`);
    tmp = await mkdtemp(path.join(tmpdir(), 'peercam-browser-'));
    sock = path.join(tmp, 'control.sock');

    daemon = spawn(BIN, ['run', '--board', 'dev', '--listen', '127.0.0.1:0', '--name', CALLEE, '--control', sock, '--no-terminal', '--set', 'ice.loopback=true', '--set', 'ice.interfaces=["lo"]',
      // An intercom: a test tone as the camera's microphone, a fake sink as its speaker.
      '--set', 'audio.microphone="test"', '--set', 'audio.speaker="fake"'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    daemon.stderr.setEncoding('utf8').on('data', chunk => daemonErr.push(chunk));
    baseUrl = await within(30_000, 'the daemon printing its URL', new Promise((resolve, reject) => {
      let pending = '';
      daemon.stdout.setEncoding('utf8').on('data', chunk => {
        daemonOut.push(chunk);
        pending += chunk;
        const lines = pending.split('\n');
        pending = lines.pop();
        for (const line of lines) {
          const url = line.match(/https?:\/\/\S+/)?.[0];
          if (url) resolve(url.replace(/[.,;)]+$/, ''));
        }
      });
      daemon.on('error', reject);
      daemon.on('exit', (code, signal) => {
        daemonExit = signal ?? code;
        reject(new Error(`the daemon exited (${daemonExit}) before printing its URL\nstderr:\n${daemonErr}`));
      });
    }));
  });

  after(async () => {
    for (const context of contexts) await within(10_000, 'closing Chromium', context.close()).catch(() => {});
    if (daemon && daemonExit === null && daemon.exitCode === null) {
      const exited = new Promise(resolve => daemon.once('exit', resolve));
      daemon.kill('SIGTERM');
      const timer = setTimeout(() => daemon.kill('SIGKILL'), 5_000);
      await within(10_000, 'the daemon exiting', exited).catch(() => {});
      clearTimeout(timer);
    }
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  /** Chromium on a fresh profile; Playwright refuses `--user-data-dir` in launch(), hence a persistent context. */
  async function browser(options = {}) {
    const profile = await mkdtemp(path.join(tmp, 'profile-'));
    const context = await within(30_000, 'launching Chromium', chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      ...options,
    }));
    contexts.push(context);
    return context;
  }

  /** Opens the phonebook page and records what it logs, for failure messages. */
  async function openPage(context) {
    const page = await context.newPage();
    page.setDefaultTimeout(15_000);
    const consoleLog = tail(80);
    page.on('console', msg => consoleLog.push(`[${msg.type()}] ${msg.text()}`));
    page.on('pageerror', err => consoleLog.push(`[pageerror] ${err.message}`));
    page.consoleLog = consoleLog;
    await page.goto(baseUrl);
    return page;
  }

  /** Runs `body`, and on failure adds the daemon's and the page's last words to the error. */
  async function withDiagnostics(page, body) {
    try {
      await body();
    } catch (err) {
      let state = '(page gone)';
      try {
        state = await page.evaluate(() => {
          const el = document.getElementById('call-state');
          return `${el?.dataset.state} "${el?.textContent}"; connection ${document.getElementById('connection')?.dataset.state}`;
        });
      } catch {}
      err.message += [
        '',
        `--- call state on the page: ${state}`,
        `--- daemon ${daemonExit === null ? 'running' : `exited (${daemonExit})`}; stderr tail:`,
        String(daemonErr),
        '--- daemon stdout tail:',
        String(daemonOut),
        '--- page console:',
        String(page.consoleLog),
      ].join('\n');
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
    const text = await page.textContent('#call-state');
    assert.equal(state, wanted, `expected call state ${wanted}, got ${state} ("${text}")`);
  }

  /** `peercam press …` on the control socket; retried while the daemon has nothing ringing yet. */
  async function press(...args) {
    let last;
    for (let attempt = 0; attempt < 10; attempt++) {
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

  async function callFromPage(page, callerName) {
    await page.fill('#caller-name', callerName);
    // The click waits for the entry to appear and its button to be enabled (phonebook open).
    await page.click(`li[data-callee="${CALLEE}"] button.call`, { timeout: 20_000 });
    await waitForState(page, 'RINGING');
  }

  /** Size of the remote picture and frames decoded so far, straight from the page. */
  function sample(page) {
    return page.evaluate(async () => {
      const video = document.getElementById('remote');
      const pc = window.peercamCall?.peerConnection;
      let framesDecoded = null;
      if (pc && pc.signalingState !== 'closed') {
        (await pc.getStats()).forEach(report => {
          if (report.type === 'inbound-rtp' && report.kind === 'video') framesDecoded = (framesDecoded ?? 0) + (report.framesDecoded ?? 0);
        });
      }
      return {
        width: video.videoWidth,
        height: video.videoHeight,
        framesDecoded,
        state: document.getElementById('call-state').dataset.state,
      };
    });
  }

  /** Polls until the video is 1280×720 and frames keep being decoded across ≥1 s. */
  async function waitForVideo(page, timeout = 20_000) {
    const deadline = Date.now() + timeout;
    let first = null;
    let last = null;
    while (Date.now() < deadline) {
      last = await sample(page);
      assert.ok(!TERMINAL.includes(last.state), `the call ended while waiting for video: ${JSON.stringify(last)}`);
      const sized = last.width === 1280 && last.height === 720 && last.framesDecoded > 0;
      if (!sized) {
        first = null;
      } else if (!first) {
        first = { ...last, at: Date.now() };
      } else if (Date.now() - first.at >= 1_000) {
        if (last.framesDecoded > first.framesDecoded) return last;
        first = { ...last, at: Date.now() }; // stalled: start a new interval
      }
      await sleep(first ? 250 : 200);
    }
    assert.fail(`no moving 1280×720 video within ${timeout} ms; last sample ${JSON.stringify(last)}, first good one ${JSON.stringify(first)}`);
  }

  test('accept: the browser gets moving 1280×720 video, then hangs up', { timeout: 120_000 }, async () => {
    const page = await openPage(await browser({ viewport: { width: 1280, height: 800 } }));
    await withDiagnostics(page, async () => {
      await callFromPage(page, 'Browser Test');
      await press('accept');
      await waitForVideo(page);
      assert.equal(await page.getAttribute('#call-state', 'data-state'), 'ESTABLISHED');
      assert.equal((await page.textContent('#call-state')).trim(), 'Connected');
      // The camera talks over the call's `peercam` data channel: its {"event":"viewers",
      // "count":1} shows in the message log, and text goes the other way.
      try {
        await page.waitForFunction(
          () => [...document.querySelectorAll('#messages li')].some(li => li.textContent === '1 person watching'),
          null, { timeout: 5_000 },
        );
      } catch {
        const lines = await page.$$eval('#messages li', lis => lis.map(li => li.textContent));
        assert.fail(`no "1 person watching" in #messages within 5 s of ESTABLISHED (from the camera's {"event":"viewers","count":1}); the log has ${JSON.stringify(lines)}`);
      }
      await page.fill('#message-input', 'hi camera');
      await page.click('#message-send', { timeout: 5_000 });
      const sent = await page.$$eval('#messages li', lis => lis.map(li => li.textContent));
      assert.ok(sent.includes('You: hi camera') && !sent.some(line => line.startsWith('Not sent')), `sending "hi camera" failed; the log has ${JSON.stringify(sent)}`);
      // Sound both ways: the camera's tone reaches the page, the page's microphone
      // reaches the camera's speaker.
      const audioIn = await page.evaluate(async () => {
        let packets = 0;
        (await window.peercamCall.peerConnection.getStats()).forEach(report => {
          if (report.type === 'inbound-rtp' && report.kind === 'audio') packets += report.packetsReceived ?? 0;
        });
        return packets;
      });
      assert.ok(audioIn > 0, `no audio from the camera reached the page (${audioIn} packets)`);
      const played = await new Promise(resolve => {
        execFile(BIN, ['status', '--control', sock], { timeout: 10_000 }, (err, stdout) => {
          resolve(err ? -1 : JSON.parse(stdout).calls?.[0]?.played_audio_buffers ?? 0);
        });
      });
      assert.ok(played > 0, `the camera's speaker played nothing from the page's microphone (${played})`);
      await page.click('#hangup');
      await waitForState(page, 'ENDED', 10_000);
      assert.equal((await page.textContent('#call-state')).trim(), 'Ended: caller hung up');
    });
    await page.close();
  });

  test('decline: the page shows the reason given at the device', { timeout: 90_000 }, async () => {
    const page = await openPage(contexts[0] ?? await browser({ viewport: { width: 1280, height: 800 } }));
    await withDiagnostics(page, async () => {
      await callFromPage(page, 'Browser Test');
      await press('decline', '--reason', 'Not now');
      await waitForState(page, 'DECLINED', 10_000);
      assert.equal((await page.textContent('#call-state')).trim(), 'Declined: Not now');
    });
    await page.close();
  });

  test('phone: a 390×844 screen shows the call; screenshot for the docs', { timeout: 120_000 }, async () => {
    const page = await openPage(await browser({
      viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
    }));
    await withDiagnostics(page, async () => {
      await callFromPage(page, 'Phone Test');
      await press('accept');
      await waitForVideo(page);
      await sleep(1_000); // let a few more frames in, so the picture is not the first black one
      await mkdir(path.dirname(SCREENSHOT), { recursive: true });
      await page.screenshot({ path: SCREENSHOT });
      // With the list and the video both showing, nothing may stick out sideways.
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
      assert.ok(overflow <= 0, `the page is ${overflow}px wider than the phone screen`);
      await page.click('#hangup');
      await waitForState(page, 'ENDED', 10_000);
    });
    await page.close();
  });
});
