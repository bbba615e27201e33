// The stock PeerJS server (`peer` from npm) and the stock `peerjs` client, unchanged: the
// daemon registers on the server under its callee name, a page calls it with
// `peer.call(name, stream, {metadata})`, the buttons answer, and either side hangs up.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Bench, daemonStatus, framesDecoded, openPage, press, serveFiles, sleep, tail, waitForStatus, within,
} from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const CALLEE = 'peerjs-cam';

// A page that receives only: PeerJS refuses a call without a stream, so it passes an
// empty one and asks createOffer (through `constraints`) to receive video and audio.
const CALLER_PAGE = `<!doctype html>
<html><body>
<video id="video" autoplay muted playsinline></video>
<script src="/peerjs.min.js"></script>
<script>
  window.events = [];
  window.callCamera = (port, camera, callerName) => new Promise((resolve, reject) => {
    const peer = window.peer = new peerjs.Peer({
      host: '127.0.0.1', port, path: '/', key: 'peerjs', debug: 1,
      config: { iceServers: [] },
    });
    peer.on('error', err => { window.events.push('peer-error:' + err.type); reject(err.type); });
    peer.on('open', () => {
      const call = window.call = peer.call(camera, new MediaStream(), {
        metadata: { callerName },
        constraints: { offerToReceiveVideo: true, offerToReceiveAudio: true },
      });
      window.pc = call.peerConnection;
      call.on('stream', stream => {
        window.events.push('stream');
        document.getElementById('video').srcObject = stream;
        resolve();
      });
      call.on('close', () => window.events.push('close'));
      call.on('error', err => window.events.push('call-error:' + err.type));
    });
  });
</script>
</body></html>`;

/** A free TCP port on loopback, for a server that cannot be told to pick one. */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** The stock PeerJS server on 127.0.0.1:`port`, resolved once it answers HTTP. */
class PeerServer {
  constructor(port) {
    this.port = port;
    this.log = tail(30);
    this.child = null;
  }

  async start() {
    const bin = path.join(here, 'node_modules/peer/dist/bin/peerjs.js');
    this.child = spawn(process.execPath, [bin, '--port', String(this.port), '--host', '127.0.0.1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout.setEncoding('utf8').on('data', chunk => this.log.push(chunk));
    this.child.stderr.setEncoding('utf8').on('data', chunk => this.log.push(chunk));
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      try {
        if ((await fetch(`http://127.0.0.1:${this.port}/`)).ok) return;
      } catch {}
      assert.equal(this.child.exitCode, null, `the PeerJS server exited:\n${this.log}`);
      await sleep(100);
    }
    assert.fail(`the PeerJS server did not answer on port ${this.port} within 20 s:\n${this.log}`);
  }

  /** SIGKILL: on SIGTERM the stock server waits for every client to leave first. */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise(resolve => child.once('exit', resolve));
    child.kill('SIGKILL');
    await within(10_000, 'the PeerJS server exiting', exited);
  }
}

describe('stock PeerJS clients', () => {
  const bench = new Bench();
  const daemon = bench.peercam('daemon');
  let sock;
  let files;
  let server;

  before(async () => {
    await bench.open('peercam-peerjs-');
    sock = path.join(bench.tmp, 'control.sock');
    server = new PeerServer(await freePort());
    await server.start();
    await daemon.start(['run', '--board', 'dev', '--listen', '127.0.0.1:0', '--name', CALLEE,
      '--control', sock, '--no-terminal', '--set', 'ice.loopback=true', '--set', 'ice.interfaces=["lo"]',
      '--set', `peerjs.server="http://127.0.0.1:${server.port}/"`]);
    files = await serveFiles({
      '/': { body: CALLER_PAGE, type: 'text/html' },
      '/peerjs.min.js': { file: path.join(here, 'node_modules/peerjs/dist/peerjs.min.js'), type: 'text/javascript' },
    });
    await waitForStatus(sock, 'registration on the PeerJS server', s => s.peerjs === true, 20_000);
  });

  after(async () => {
    await bench.close();
    await server?.stop();
    await files?.close();
  });

  /** Calls the camera from a fresh page, presses accept, and waits for moving 1280×720 video. */
  async function callAndWatch(callerName) {
    const page = await openPage(bench.contexts[0] ?? await bench.browser(), files.url, `${callerName}'s page`);
    const streaming = page.evaluate(([port, camera, name]) => window.callCamera(port, camera, name), [server.port, CALLEE, callerName]);
    const ringing = await waitForStatus(sock, 'a ringing PeerJS call', s => s.calls?.some(c => c.state === 'RINGING'));
    assert.equal(ringing.calls[0].caller, callerName, 'the metadata names the caller at the device');
    assert.equal(ringing.calls[0].via, 'peerjs');
    await press(sock, 'accept');
    await within(20_000, 'the stream event after accept', streaming);
    const deadline = Date.now() + 20_000;
    let size = null;
    while (Date.now() < deadline) {
      size = await page.evaluate(() => {
        const v = document.getElementById('video');
        return { width: v.videoWidth, height: v.videoHeight };
      });
      if (size.width === 1280 && size.height === 720) break;
      await sleep(250);
    }
    assert.deepEqual([size.width, size.height], [1280, 720], `the page shows ${JSON.stringify(size)}`);
    const first = await framesDecoded(page);
    await sleep(1_000);
    const later = await framesDecoded(page);
    assert.ok(later > first, `the picture stands still (${first} → ${later} frames)`);
    await waitForStatus(sock, 'one viewer', s => s.viewers === 1);
    return page;
  }

  test('a receive-only call gets 1280×720 video; call.close() ends it at the device', { timeout: 120_000 }, async () => {
    let page;
    await bench.withDiagnostics([page], async () => {
      page = await callAndWatch('Ray');
      await page.evaluate(() => window.call.close());
      await waitForStatus(sock, 'the call ended after call.close()', s => (s.calls ?? []).length === 0);
    });
    await page?.close();
  });

  test('a hang-up at the device fires close on the page', { timeout: 120_000 }, async () => {
    let page;
    await bench.withDiagnostics([page], async () => {
      page = await callAndWatch('Ada');
      await press(sock, 'hangup');
      await page.waitForFunction(() => window.events.includes('close'), null, { timeout: 15_000 });
      await waitForStatus(sock, 'no call left', s => (s.calls ?? []).length === 0);
    });
    await page?.close();
  });

  test('a decline at the device reaches the page as peer-unavailable', { timeout: 60_000 }, async () => {
    const page = await openPage(bench.contexts[0] ?? await bench.browser(), files.url, 'the declined page');
    await bench.withDiagnostics([page], async () => {
      const outcome = page.evaluate(([port, camera]) => window.callCamera(port, camera, 'Eve').then(() => 'stream', type => type), [server.port, CALLEE]);
      await waitForStatus(sock, 'a ringing PeerJS call', s => s.calls?.some(c => c.state === 'RINGING'));
      await press(sock, 'decline', '--reason', 'Not now');
      assert.equal(await within(15_000, 'the page hearing of the decline', outcome), 'peer-unavailable');
      await waitForStatus(sock, 'no call left', s => (s.calls ?? []).length === 0);
    });
    await page.close();
  });

  test('the daemon registers again after the PeerJS server restarts, and takes calls', { timeout: 120_000 }, async () => {
    await server.stop();
    await waitForStatus(sock, 'the PeerJS registration lost', s => s.peerjs === false, 15_000);
    const restarted = Date.now();
    await server.start();
    await waitForStatus(sock, 'registration on the restarted PeerJS server', s => s.peerjs === true, 20_000);
    console.log(`# re-registered on the PeerJS server ${Date.now() - restarted} ms after it was started again`);
    let page;
    await bench.withDiagnostics([page], async () => {
      page = await callAndWatch('Bo');
      await page.evaluate(() => window.call.close());
      await waitForStatus(sock, 'the call ended', s => (s.calls ?? []).length === 0);
    });
    await page?.close();
    assert.ok((await daemonStatus(sock)).peerjs, 'still registered');
  });
});
