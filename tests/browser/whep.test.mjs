// A stock WHEP player (whip-whep from npm, unchanged) plays the camera in headless
// Chromium: the viewer's token names it at the device, the buttons decide, DELETE hangs
// up; bad tokens and malformed offers get clear HTTP errors and leave nothing behind.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Bench, daemonStatus, framesDecoded, openPage, press, serveFiles, sleep, waitForStatus, within,
} from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const CALLEE = 'whep-cam';
const TOKEN = 'grandma-token-1';
const DEVICE_TOKEN = 'camera-token-1';

// The player as its README shows it: receive-only video and audio, Bearer token, stop()
// sends DELETE to the session's Location.
const PLAYER_PAGE = `<!doctype html>
<html><body>
<video id="video" autoplay muted playsinline></video>
<script type="module">
  import { WHEPClient } from '/whep.js';
  let whep;
  window.play = async (url, token) => {
    const pc = window.pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const video = document.getElementById('video');
    pc.ontrack = e => { if (e.track.kind === 'video') video.srcObject = e.streams[0] ?? new MediaStream([e.track]); };
    whep = new WHEPClient();
    await whep.view(pc, url, token);
    return whep.resourceURL?.toString() ?? null;
  };
  window.stopIt = () => whep.stop();
</script>
</body></html>`;

describe('a stock WHEP player', () => {
  const bench = new Bench();
  const daemon = bench.peercam('daemon');
  let sock;
  let baseUrl;
  let files;

  before(async () => {
    await bench.open('peercam-whep-');
    sock = path.join(bench.tmp, 'control.sock');
    baseUrl = await daemon.start(['run', '--board', 'dev', '--listen', '127.0.0.1:0', '--name', CALLEE,
      '--control', sock, '--no-terminal', '--set', 'ice.loopback=true', '--set', 'ice.interfaces=["lo"]',
      // Users mode: the player's bearer token is a user token; the camera needs its own.
      '--set', 'access.callers="users"', '--set', `access.users.grandma=${TOKEN}`,
      '--set', `access.devices.${CALLEE}="${DEVICE_TOKEN}"`, '--set', `device.token="${DEVICE_TOKEN}"`]);
    // Another origin than the daemon's, as a player on someone's own site would be: CORS
    // is part of what is tested.
    files = await serveFiles({
      '/': { body: PLAYER_PAGE, type: 'text/html' },
      '/whep.js': { file: path.join(here, 'node_modules/whip-whep/whep.js'), type: 'text/javascript' },
    });
  });

  after(async () => {
    await bench.close();
    await files?.close();
  });

  test('plays 1280×720 after accept; DELETE ends the call at the device', { timeout: 120_000 }, async () => {
    const context = await bench.browser();
    const page = await openPage(context, files.url, 'the WHEP player');
    await bench.withDiagnostics([page], async () => {
      const endpoint = `${baseUrl}whep/${CALLEE}`;
      const playing = page.evaluate(([url, token]) => window.play(url, token), [endpoint, TOKEN]);
      const ringing = await waitForStatus(sock, 'a ringing WHEP call',
        s => s.calls?.some(c => c.state === 'RINGING'));
      assert.equal(ringing.calls[0].caller, 'grandma', 'the token names the viewer at the device');
      await press(sock, 'accept');
      const location = await within(20_000, 'the POST answered after accept', playing);
      assert.match(location ?? '', new RegExp(`/whep/${CALLEE}/whep-[0-9a-f]+$`));
      const deadline = Date.now() + 20_000;
      let size = null;
      while (Date.now() < deadline) {
        size = await page.evaluate(() => {
          const v = document.getElementById('video');
          return { width: v.videoWidth, height: v.videoHeight, time: v.currentTime };
        });
        if (size.width === 1280 && size.height === 720 && size.time > 0.5) break;
        await sleep(250);
      }
      assert.deepEqual([size.width, size.height], [1280, 720], `the player shows ${JSON.stringify(size)}`);
      const before = await framesDecoded(page);
      await sleep(1_000);
      const after = await framesDecoded(page);
      assert.ok(after > before, `the picture stands still (${before} → ${after} frames)`);
      await waitForStatus(sock, 'the WHEP viewer established', s => s.viewers === 1);

      await page.evaluate(() => window.stopIt());
      await waitForStatus(sock, 'the call ended after DELETE', s => (s.calls ?? []).length === 0 && s.viewers === 0);
    });
    await page.close();
  });

  test('a bad or missing token gets 401, a malformed offer 400, an unknown camera 404; nothing rings', { timeout: 60_000 }, async () => {
    const endpoint = `${baseUrl}whep/${CALLEE}`;
    const post = (body, headers = {}) => fetch(endpoint, {
      method: 'POST', body, headers: { 'content-type': 'application/sdp', ...headers },
    });
    const offer = 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=recvonly\r\n';

    let res = await post(offer);
    assert.equal(res.status, 401, await res.text());
    assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer/);
    assert.match(await post(offer, { authorization: 'Bearer wrong-token' }).then(r => r.text()), /not known/);
    res = await post(offer, { authorization: `Bearer ${DEVICE_TOKEN}` });
    assert.equal(res.status, 403, 'a device token does not make a viewer');
    res = await post('this is not SDP', { authorization: `Bearer ${TOKEN}` });
    assert.equal(res.status, 400);
    assert.match(await res.text(), /not a usable offer/);
    res = await post('v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n', { authorization: `Bearer ${TOKEN}` });
    assert.equal(res.status, 400, 'an offer without video');
    res = await post('x'.repeat(100_000), { authorization: `Bearer ${TOKEN}` });
    assert.equal(res.status, 413);
    res = await fetch(`${baseUrl}whep/nobody`, {
      method: 'POST', body: offer, headers: { 'content-type': 'application/sdp', authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(res.status, 404);
    res = await fetch(`${baseUrl}whep/${CALLEE}/whep-0000000000000000`, {
      method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(res.status, 404, 'DELETE of a session that does not exist');
    res = await fetch(endpoint, { method: 'OPTIONS' });
    assert.equal(res.status, 204);
    assert.equal(res.headers.get('access-control-allow-origin'), '*');

    // The camera never rang and the phonebook shows it free.
    const status = await daemonStatus(sock);
    assert.deepEqual(status.calls, [], JSON.stringify(status));
    const callees = await fetch(`${baseUrl}api/callees`).then(r => r.json());
    assert.equal(callees.find(c => c.name === CALLEE)?.presence, 'available', JSON.stringify(callees));
  });

  test('a player that gives up while the camera rings leaves nothing ringing', { timeout: 60_000 }, async () => {
    const page = await openPage(bench.contexts[0] ?? await bench.browser(), files.url, 'the WHEP player');
    await bench.withDiagnostics([page], async () => {
      page.evaluate(([url, token]) => window.play(url, token), [`${baseUrl}whep/${CALLEE}`, TOKEN]).catch(() => {});
      await waitForStatus(sock, 'a ringing WHEP call', s => s.calls?.some(c => c.state === 'RINGING'));
      await page.close(); // the POST is cut off mid-ring
      await waitForStatus(sock, 'the ringing call gone after the player left', s => (s.calls ?? []).length === 0);
    });
  });
});
