// Who may call, over HTTPS: the daemon's phonebook with user tokens and a rule, its
// self-signed certificate, and a page reached by a host name (not localhost), which only
// HTTPS makes a secure context with a camera and microphone.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  Bench, chromiumArgs, openPage, press, waitForMedia, waitForState, waitForStatus,
} from './harness.mjs';

const CALLEE = 'door-cam';
const RAY = 'ray-token-0001';
const EVE = 'eve-token-0001';
const DEVICE = 'door-device-token';
const HOST = 'peercam.test';
const CAMERA_VIDEO = {
  media: 'video',
  wanted: 'moving 1280×720 video',
  ready: last => last.width === 1280 && last.height === 720 && last.framesDecoded > 0,
  moving: (first, last) => last.framesDecoded > first.framesDecoded,
};

describe('access control over HTTPS', () => {
  const bench = new Bench();
  const daemon = bench.peercam('daemon');
  let sock;
  let pageUrl;

  before(async () => {
    await bench.open('peercam-access-');
    sock = path.join(bench.tmp, 'control.sock');
    const url = await daemon.start(['run', '--board', 'dev', '--listen', '127.0.0.1:0', '--name', CALLEE,
      '--control', sock, '--no-terminal', '--set', 'ice.loopback=true', '--set', 'ice.interfaces=["lo"]',
      '--set', 'tls.mode="on"', '--set', `tls.dir="${bench.tmp}"`,
      '--set', 'access.callers="users"', '--set', `access.users.ray="${RAY}"`, '--set', `access.users.eve="${EVE}"`,
      '--set', `access.devices.${CALLEE}="${DEVICE}"`, '--set', `device.token="${DEVICE}"`,
      '--set', `access.rules=[{callee="${CALLEE}", allow=["ray"]}]`]);
    assert.match(url, /^https:\/\//, 'the daemon prints an https URL');
    // The same server under a name other than localhost, as a phone on the LAN sees it.
    pageUrl = url.replace('127.0.0.1', HOST);
  });

  after(() => bench.close());

  async function browser() {
    return bench.browser({
      ignoreHTTPSErrors: true, // the self-signed certificate, accepted once by a person
      args: [...chromiumArgs(), `--host-resolver-rules=MAP ${HOST} 127.0.0.1`],
    });
  }

  async function useToken(page, token) {
    await page.waitForSelector('#token-field:not([hidden])');
    await page.fill('#token', token);
    await page.click('#token-use');
  }

  test('no token: a secure context, the token field, and no cameras listed', { timeout: 60_000 }, async () => {
    const page = await openPage(await browser(), pageUrl, 'the page without a token');
    await bench.withDiagnostics([page], async () => {
      const secure = await page.evaluate(() => ({ secure: window.isSecureContext, media: !!navigator.mediaDevices?.getUserMedia }));
      assert.deepEqual(secure, { secure: true, media: true }, `https://${HOST} is a secure context with getUserMedia`);
      await page.waitForSelector('#token-field:not([hidden])');
      await page.waitForFunction(() => /token/i.test(document.getElementById('token-status').textContent));
      assert.equal(await page.locator(`li[data-callee="${CALLEE}"]`).count(), 0, 'the camera is not listed without a token');
    });
    await page.close();
  });

  test('a user the rule leaves out is refused; the allowed one is announced by name and watches', { timeout: 120_000 }, async () => {
    const page = await openPage(await browser(), pageUrl, 'the page with tokens');
    await bench.withDiagnostics([page], async () => {
      await useToken(page, EVE);
      await page.fill('#caller-name', 'Definitely Ray');
      await page.click(`li[data-callee="${CALLEE}"] button.call`, { timeout: 20_000 });
      const refused = await waitForState(page, 'ERROR');
      assert.match(refused, /eve may not call door-cam/);
      assert.deepEqual((await waitForStatus(sock, 'no call', s => Array.isArray(s.calls))).calls, []);

      await useToken(page, RAY);
      await page.click(`li[data-callee="${CALLEE}"] button.call`, { timeout: 20_000 });
      await waitForState(page, 'RINGING');
      const ringing = await waitForStatus(sock, 'a ringing call', s => s.calls?.some(c => c.state === 'RINGING'));
      assert.equal(ringing.calls[0].caller, 'ray', 'the device is told the verified user, not the name typed');
      await press(sock, 'accept');
      await waitForMedia(page, CAMERA_VIDEO);
      await page.click('#hangup');
      await waitForState(page, 'ENDED', 10_000);
    });
    await page.close();
  });
});
