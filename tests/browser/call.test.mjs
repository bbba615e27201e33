// Calls a real peercam daemon from headless Chromium: accept, decline, and a phone-sized
// screen. Run with `npm test` in this folder after `cargo build`; PEERCAM_BIN overrides
// the daemon's path.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  Bench, PHONE, daemonStatus, noSidewaysOverflow, openPage, press as pressOn, screenshotPath, sleep, waitForMedia,
  waitForState,
} from './harness.mjs';

const CALLEE = 'test-cam';
const SCREENSHOT = screenshotPath('screenshot-phone.png');
const DESKTOP = { viewport: { width: 1280, height: 800 } };
/** The camera's picture at full size, still moving; the caller sends no picture to compare. */
const CAMERA_VIDEO = {
  media: 'video',
  wanted: 'moving 1280×720 video',
  ready: last => last.width === 1280 && last.height === 720 && last.framesDecoded > 0,
  moving: (first, last) => last.framesDecoded > first.framesDecoded,
};

describe('peercam in a real browser', () => {
  const bench = new Bench();
  const daemon = bench.peercam('daemon');
  let sock;
  let baseUrl;

  before(async () => {
    await bench.open('peercam-browser-');
    sock = path.join(bench.tmp, 'control.sock');
    baseUrl = await daemon.start(['run', '--board', 'dev', '--listen', '127.0.0.1:0', '--name', CALLEE, '--control', sock, '--no-terminal', '--set', 'ice.loopback=true', '--set', 'ice.interfaces=["lo"]',
      // An intercom: a test tone as the camera's microphone, a fake sink as its speaker.
      '--set', 'audio.microphone="test"', '--set', 'audio.speaker="fake"']);
  });

  after(() => bench.close());

  const press = (...args) => pressOn(sock, ...args);

  async function callFromPage(page, callerName) {
    await page.fill('#caller-name', callerName);
    // The click waits for the entry to appear and its button to be enabled (phonebook open).
    await page.click(`li[data-callee="${CALLEE}"] button.call`, { timeout: 20_000 });
    await waitForState(page, 'RINGING');
  }

  test('accept: the browser gets moving 1280×720 video, then hangs up', { timeout: 120_000 }, async () => {
    const page = await openPage(await bench.browser(DESKTOP), baseUrl);
    await bench.withDiagnostics([page], async () => {
      await callFromPage(page, 'Browser Test');
      await press('accept');
      await waitForMedia(page, CAMERA_VIDEO);
      assert.equal(await page.getAttribute('#call-state', 'data-state'), 'ESTABLISHED');
      assert.equal((await page.textContent('#call-state')).trim(), 'Connected');
      // The statistics overlay: frame rate and bitrate from getStats, and the latency read
      // from the capture-time stamps the dev board draws into the picture.
      await page.click('#stats-toggle');
      try {
        await page.waitForFunction(() => /\d+ fps/.test(document.getElementById('stats').textContent)
          && /latency \d+ ms/.test(document.getElementById('stats').textContent), null, { timeout: 5_000 });
      } catch {
        assert.fail(`the statistics overlay shows ${JSON.stringify(await page.textContent('#stats'))}, without fps and latency`);
      }
      const overlay = await page.textContent('#stats');
      const latency = Number(overlay.match(/latency (\d+) ms/)[1]);
      assert.ok(latency > 0 && latency < 1000, `a glass-to-glass latency of ${latency} ms on loopback`);
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
      let status = await daemonStatus(sock);
      const played = status.calls?.[0]?.played_audio_buffers ?? 0;
      assert.ok(played > 0, `the camera's speaker played nothing from the page's microphone (${played})`);
      // Chromium reports its bandwidth estimate (REMB) about once a second; the encoder's
      // bitrate follows it.
      for (let i = 0; i < 25 && !(status.feed?.estimates > 0); i++) {
        await sleep(200);
        status = await daemonStatus(sock);
      }
      assert.ok(status.feed?.estimates > 0, `no bandwidth estimate from Chromium reached the camera within 5 s: ${JSON.stringify(status.feed)}`);
      await page.click('#hangup');
      await waitForState(page, 'ENDED', 10_000);
      assert.equal((await page.textContent('#call-state')).trim(), 'Ended: caller hung up');
      // A call that went well, from a browser, logs nothing above info (webrtc-rs warns of
      // Chromium's ClientHello and of closing unless the default filter quiets it).
      await sleep(1_000);
      assert.deepEqual(daemon.warnings, [], 'warnings in the daemon\'s log');
    });
    await page.close();
  });

  test('decline: the page shows the reason given at the device', { timeout: 90_000 }, async () => {
    const page = await openPage(bench.contexts[0] ?? await bench.browser(DESKTOP), baseUrl);
    await bench.withDiagnostics([page], async () => {
      await callFromPage(page, 'Browser Test');
      await press('decline', '--reason', 'Not now');
      await waitForState(page, 'DECLINED', 10_000);
      assert.equal((await page.textContent('#call-state')).trim(), 'Declined: Not now');
    });
    await page.close();
  });

  test('phone: a 390×844 screen shows the call; screenshot for the docs', { timeout: 120_000 }, async () => {
    const page = await openPage(await bench.browser(PHONE), baseUrl);
    await bench.withDiagnostics([page], async () => {
      await callFromPage(page, 'Phone Test');
      await press('accept');
      await waitForMedia(page, CAMERA_VIDEO);
      await sleep(1_000); // let a few more frames in, so the picture is not the first black one
      await mkdir(path.dirname(SCREENSHOT), { recursive: true });
      await page.screenshot({ path: SCREENSHOT });
      // With the list and the video both showing, nothing may stick out sideways.
      await noSidewaysOverflow(page);
      await page.click('#hangup');
      await waitForState(page, 'ENDED', 10_000);
    });
    await page.close();
  });
});
