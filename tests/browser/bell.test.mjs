// The visitor's bell (docs/protocol.md, "The bell: the device calls"): the daemon rings the
// household's pages at once, each shows the door's live picture before anyone answers, the
// first to answer talks with the door and may open it, the others hear who answered, and
// nobody answering is "missed". Three phone-sized Chromiums online as ray, ada and bob
// (bell.ring names ray and ada), the daemon with a test-tone microphone, a fake speaker
// and a door output on the simulated pins. Run with `npm test` in this folder after
// `cargo build`; PEERCAM_BIN overrides the binary's path, PEERCAM_WEB_FROM_DISK=1 serves
// web/ from this checkout instead of the binary's copy.
//
// Every page's WebSocket goes through the test (Playwright's routeWebSocket), so a test
// can hold back what the phonebook sends a page (an answer that crosses a hang-up) or send
// what a page would not (an answer given twice).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  BIN, Bench, PHONE, checkServedWeb, daemonStatus, noSidewaysOverflow, openPage, press, screenshotPath, serveWebFromDisk,
  sleep, waitForMedia, waitForState, waitForStatus, within,
} from './harness.mjs';

const DEVICE = 'front-door';
const RING_TIMEOUT_SECS = 15;
const DOOR_OPEN_SECS = 3;
const SCREENSHOT = screenshotPath('screenshot-bell.png');
/** The door's picture and sound with the page's microphone going back, all moving. */
const TWO_WAY = {
  media: 'the door\'s video and sound',
  wanted: 'moving 1280×720 video with sound',
  ready: last => last.width === 1280 && last.framesDecoded > 0 && last.audioPackets > 0,
  moving: (first, last) => last.framesDecoded > first.framesDecoded && last.audioPackets > first.audioPackets,
};

describe('the bell rings the household', () => {
  const bench = new Bench();
  const daemon = bench.peercam('daemon');
  let sock;
  let baseUrl;
  let ray;
  let ada;
  let bob;
  /** Each page's relayed WebSocket, by page. */
  const links = new Map();

  before(async () => {
    await bench.open('peercam-bell-');
    sock = path.join(bench.tmp, 'control.sock');
    baseUrl = await daemon.start(['run', '--board', 'dev', '--listen', '127.0.0.1:0', '--name', DEVICE, '--control', sock,
      '--no-terminal', '--set', 'ice.loopback=true', '--set', 'ice.interfaces=["lo"]',
      '--set', 'audio.microphone="test"', '--set', 'audio.speaker="fake"',
      '--set', 'bell.ring=["ray","ada"]', '--set', `bell.ring_timeout_secs=${RING_TIMEOUT_SECS}`,
      '--set', `bell.door_open_secs=${DOOR_OPEN_SECS}`,
      // A door relay on a pin: with no GPIO backend the simulated one drives and logs it.
      '--set', 'gpio.backend="none"', '--set', 'gpio.door={ line = 6 }']);

    await checkServedWeb(baseUrl);

    ray = await openPage(await browser({ hidden: true }), baseUrl, 'ray');
    ada = await openPage(await browser(), baseUrl, 'ada');
    bob = await openPage(await browser(), baseUrl, 'bob');
  });

  after(() => bench.close());

  /**
   * A phone-sized Chromium whose page's WebSocket is relayed through `links`. `hidden`: the
   * page believes its tab is hidden and may show notifications, which are recorded in
   * `window.peercamNotices` (headless Chromium shows none).
   */
  async function browser({ hidden = false } = {}) {
    const context = await bench.browser(PHONE);
    await serveWebFromDisk(context, baseUrl);
    const link = { page: null, server: null, hold: null, held: [], fromServer: [], toServer: [] };
    await context.routeWebSocket(url => new URL(url).pathname === '/ws', ws => {
      const server = ws.connectToServer();
      Object.assign(link, { page: ws, server });
      ws.onMessage(message => {
        link.toServer.push(parse(message));
        server.send(message);
      });
      server.onMessage(message => {
        const msg = parse(message);
        link.fromServer.push(msg);
        if (msg && link.hold?.(msg)) link.held.push(message);
        else ws.send(message);
      });
    });
    if (hidden) {
      await context.grantPermissions(['notifications'], { origin: new URL(baseUrl).origin });
      await context.addInitScript(() => {
        Object.defineProperty(Document.prototype, 'visibilityState', { configurable: true, get: () => 'hidden' });
        const Real = window.Notification;
        window.peercamNotices = [];
        window.Notification = class extends Real {
          constructor(title, options) {
            super(title, options);
            const notice = { title, body: options?.body, closed: false };
            window.peercamNotices.push(notice);
            const close = this.close.bind(this);
            this.close = () => {
              notice.closed = true;
              close();
            };
          }
        };
      });
    } else {
      await context.addInitScript(() => {
        if (typeof Notification !== 'function') return;
        const ask = Notification.requestPermission.bind(Notification);
        Notification.requestPermission = (...args) => {
          window.peercamNotificationAsked = true;
          return ask(...args);
        };
      });
    }
    context.link = link;
    return context;
  }

  function parse(message) {
    try {
      return JSON.parse(message);
    } catch {
      return null;
    }
  }

  const linkOf = page => page.context().link;

  /** `peercam press bell`: its reply, which says whom it rings. */
  function pressBell() {
    return new Promise(resolve => {
      execFile(BIN, ['press', 'bell', '--control', sock], { timeout: 10_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? (err.code ?? err.signal) : 0, text: `${stdout}${stderr}`.trim() });
      });
    });
  }

  /** Presses the bell and checks that it rings ray and ada, and not bob. */
  async function ringBoth() {
    const reply = await pressBell();
    assert.equal(reply.code, 0, `peercam press bell failed: ${reply.text}`);
    assert.match(reply.text, /^ringing ray, ada\b/, `the press should ring ray and ada: ${reply.text}`);
    assert.doesNotMatch(reply.text, /bob/);
    await Promise.all([ray, ada].map(page => page.waitForSelector('#incoming[data-kind="bell"]:not([hidden])', { timeout: 10_000 })));
  }

  /** What the ringing page shows of the door, and what its call sends and receives. */
  function doorSample(page) {
    return page.evaluate(async () => {
      const video = document.getElementById('door-video');
      const call = window.peercamCall;
      const pc = call?.peerConnection;
      let framesDecoded = 0;
      let audioIn = 0;
      let audioOut = 0;
      if (pc && pc.signalingState !== 'closed') {
        (await pc.getStats()).forEach(report => {
          if (report.type === 'inbound-rtp' && report.kind === 'video') framesDecoded += report.framesDecoded ?? 0;
          if (report.type === 'inbound-rtp' && report.kind === 'audio') audioIn += report.packetsReceived ?? 0;
          if (report.type === 'outbound-rtp' && report.kind === 'audio') audioOut += report.packetsSent ?? 0;
        });
      }
      return {
        width: video.videoWidth, height: video.videoHeight, framesDecoded, audioIn, audioOut,
        state: call?.state ?? null, prompt: !document.getElementById('incoming').hidden,
      };
    });
  }

  /** Waits until the ringing page plays the door's 1280×720 picture, frames still coming after a second. */
  async function waitForDoorPicture(page, timeout = 15_000) {
    const deadline = Date.now() + timeout;
    let first = null;
    let last = null;
    while (Date.now() < deadline) {
      last = await doorSample(page);
      assert.equal(last.state, 'RINGING', `${page.who}: the bell stopped ringing while waiting for the door's picture: ${JSON.stringify(last)}`);
      if (!(last.width === 1280 && last.height === 720 && last.framesDecoded > 0)) {
        first = null;
      } else if (!first) {
        first = { ...last, at: Date.now() };
      } else if (Date.now() - first.at >= 1_000 && last.framesDecoded > first.framesDecoded) {
        return last;
      }
      await sleep(200);
    }
    assert.fail(`${page.who}: the door's picture did not play while ringing within ${timeout} ms; last ${JSON.stringify(last)}`);
  }

  /** The daemon's call to `name`, from its status. */
  async function callTo(name) {
    return (await daemonStatus(sock)).calls?.find(c => c.callee === name) ?? null;
  }

  /** Waits for the camera's entry on `page` to show `text` as its bell state. */
  async function waitForBellState(page, text, timeout = 5_000) {
    try {
      await page.waitForFunction(([device, text]) => {
        const el = document.querySelector(`li[data-callee="${device}"] .bell-state`);
        return el && !el.hidden && el.textContent === text;
      }, [DEVICE, text], { timeout });
    } catch {
      const shown = await page.$eval(`li[data-callee="${DEVICE}"]`, li => li.textContent).catch(() => '(no entry)');
      assert.fail(`${page.who}: the camera's entry never said "${text}" within ${timeout} ms: ${JSON.stringify(shown)}`);
    }
  }

  async function waitForMessage(page, line, timeout = 5_000) {
    try {
      await page.waitForFunction(line => [...document.querySelectorAll('#messages li')].some(li => li.textContent === line), line, { timeout });
    } catch {
      const lines = await page.$$eval('#messages li', lis => lis.map(li => li.textContent));
      assert.fail(`${page.who}: no message "${line}" within ${timeout} ms; the log has ${JSON.stringify(lines)}`);
    }
  }

  async function goOnline(page, name) {
    await page.fill('#caller-name', name[0].toUpperCase() + name.slice(1));
    await page.fill('#reachable-name', name);
    await page.click('#go-online');
    await page.waitForSelector('#go-online[aria-pressed="true"]', { timeout: 15_000 });
  }

  /** Closes what the panel shows of the last call, if it shows one. */
  async function dismiss(page) {
    if (await page.isVisible('#dismiss')) await page.click('#dismiss');
  }

  test('online: ray, ada and bob go online and see the camera; Go online asks for notifications', { timeout: 60_000 }, async () => {
    await bench.withDiagnostics([ray, ada, bob], async () => {
      for (const [page, name] of [[ray, 'ray'], [ada, 'ada'], [bob, 'bob']]) await goOnline(page, name);
      for (const page of [ray, ada, bob]) {
        await page.waitForSelector(`li[data-callee="${DEVICE}"]`, { timeout: 10_000 });
        for (const name of ['ray', 'ada', 'bob']) await page.waitForSelector(`li[data-callee="${name}"]`, { timeout: 10_000 });
      }
      // Permission is asked for where the person has not decided yet, and not again where
      // it is granted.
      assert.equal(await ada.evaluate(() => window.peercamNotificationAsked === true), true, 'Go online did not ask for notifications');
      assert.equal(await ray.evaluate(() => Notification.permission), 'granted');
    });
  });

  test('press: ray and ada ring with the door\'s picture before anyone answers, nothing leaves the house, bob does not ring', { timeout: 90_000 }, async () => {
    await bench.withDiagnostics([ray, ada, bob], async () => {
      await ringBoth();
      for (const page of [ray, ada]) {
        assert.equal((await page.textContent('#incoming-caller')).trim(), DEVICE);
        assert.equal((await page.textContent('#accept')).trim(), 'Answer');
        assert.equal((await page.textContent('#incoming-title')).trim(), 'Doorbell');
        assert.equal(await page.evaluate(() => window.peercamCall.isBell && window.peercamCall.previewing), true);
        assert.equal(await page.evaluate(() => window.peercamRingTone.ringing), true, `${page.who}: no ring tone`);
      }
      await Promise.all([waitForDoorPicture(ray), waitForDoorPicture(ada)]);
      for (const page of [ray, ada]) {
        const sample = await doorSample(page);
        // The page answered early with an audio sender but no track: not a packet of the
        // house's sound before someone answers; nor does the door send its own yet.
        assert.equal(sample.audioOut, 0, `${page.who}: the page sent ${sample.audioOut} audio packets while it rang`);
        assert.equal(sample.audioIn, 0, `${page.who}: the door sent ${sample.audioIn} audio packets before anyone answered`);
        const call = await callTo(page.who);
        assert.equal(call?.played_audio_buffers, 0, `the door played sound from ${page.who} before anyone answered: ${JSON.stringify(call)}`);
      }
      // Bob is not in bell.ring.
      assert.equal(await bob.isHidden('#incoming'), true);
      assert.equal(await bob.evaluate(() => window.peercamCall === undefined), true, 'bob got a call');
      await waitForBellState(bob, 'bell ringing');
      const status = await daemonStatus(sock);
      assert.equal(status.bell?.state, 'ringing', JSON.stringify(status.bell));
      assert.deepEqual(status.calls.map(c => [c.role, c.callee]).sort(), [['caller', 'ada'], ['caller', 'ray']]);

      // Ray's tab is hidden: a notification names the door.
      const notices = await ray.evaluate(() => window.peercamNotices);
      assert.equal(notices.length, 1, JSON.stringify(notices));
      assert.match(notices[0].title, new RegExp(DEVICE));
      assert.equal(notices[0].closed, false);
      assert.equal(await ada.evaluate(() => window.peercamNotices), undefined);

      // Only whoever answered may open the door: a request from a page that only rings is
      // refused on its own channel, and the door stays shut.
      const refusal = await ray.evaluate(async () => {
        const call = window.peercamCall;
        const deadline = Date.now() + 10_000;
        while (!call.dataChannelOpen && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 50));
        const answer = new Promise(resolve => {
          call.on('data', text => { if (/"door"/.test(text)) resolve(JSON.parse(text)); });
          setTimeout(() => resolve(null), 5_000);
        });
        call.openDoor();
        return answer;
      });
      assert.equal(refusal?.open, false, `a ringing page's open_door was not refused: ${JSON.stringify(refusal)}`);
      assert.match(refusal.reason, /only whoever answered/);
      assert.equal((await daemonStatus(sock)).indicators?.door, false);

      await sleep(1_000); // a few more frames, so the picture is not the first one
      await noSidewaysOverflow(ada);
      await mkdir(path.dirname(SCREENSHOT), { recursive: true });
      await ada.screenshot({ path: SCREENSHOT });
    });
  });

  test('answer: ada talks with the door both ways, ray stops ringing within a second and shows "answered by ada"', { timeout: 90_000 }, async t => {
    await bench.withDiagnostics([ray, ada, bob], async () => {
      const clicked = Date.now();
      await ada.click('#accept');
      try {
        await ray.waitForFunction(() => document.getElementById('call-state')?.dataset.state === 'ENDED', null, { timeout: 1_000 });
      } catch {
        assert.fail(`ray's page did not stop ringing within a second of ada's answer: ${JSON.stringify(await doorSample(ray))}`);
      }
      const took = Date.now() - clicked;
      assert.ok(took < 1_000, `ray heard of ada's answer after ${took} ms`);
      t.diagnostic(`ray's page stopped ringing ${took} ms after ada's click`);
      assert.equal((await ray.textContent('#call-state')).trim(), 'Answered by ada');
      assert.equal(await ray.isHidden('#incoming'), true);
      assert.equal(await ray.evaluate(() => window.peercamRingTone.ringing), false);
      assert.equal(await ray.evaluate(() => window.peercamNotices.every(n => n.closed)), true, 'the notification stayed');
      assert.match(await ray.textContent('#reachable-status'), /front-door rang at .*Answered by ada/);
      // Ray's page has no door to open.
      assert.equal(await ray.isHidden('#open-door'), true);

      assert.equal(await waitForState(ada, 'ESTABLISHED'), 'Connected');
      assert.equal((await ada.textContent('#call-heading')).trim(), `Doorbell · ${DEVICE}`);
      assert.equal(await ada.evaluate(() => window.peercamRingTone.ringing), false);
      // Sound both ways: the door's tone reaches the page, the page's microphone the door.
      await waitForMedia(ada, TWO_WAY);
      const status = await waitForStatus(sock, 'sound from ada played at the door', status => {
        const ours = status.calls?.find(c => c.callee === 'ada');
        return ours?.state === 'ESTABLISHED' && ours.played_audio_buffers > 0;
      });
      assert.equal(status.bell?.state, 'answered');
      assert.equal(status.bell?.by, 'ada');
      // Only the microphone went: the door's offer has no room for a picture from the house.
      assert.equal(await ada.isHidden('#local'), true);
      assert.equal(await ada.isVisible('#open-door'), true);
      await waitForBellState(bob, 'answered by ada');
      // Ray's outcome stays until closed, not just a flash.
      await sleep(2_000);
      assert.equal((await ray.textContent('#call-state')).trim(), 'Answered by ada');
    });
  });

  test('open door: ada opens it, the door output is driven and logged with who; it closes again', { timeout: 60_000 }, async () => {
    await bench.withDiagnostics([ray, ada, bob], async () => {
      await ada.waitForSelector('#open-door:not([disabled])', { timeout: 10_000 });
      await ada.click('#open-door');
      await waitForStatus(sock, 'the door output on', status => status.indicators?.door === true, 5_000);
      await waitForMessage(ada, `Door opened by ada for ${DOOR_OPEN_SECS} s`);
      assert.match(String(daemon.err), /the door was opened.*by=ada/, 'the daemon did not log who opened the door');
      await waitForStatus(sock, 'the door output off again', status => status.indicators?.door === false, (DOOR_OPEN_SECS + 3) * 1_000);

      await ada.click('#hangup');
      assert.equal(await waitForState(ada, 'ENDED', 10_000), 'Ended: callee hung up');
      await waitForStatus(sock, 'no calls', status => status.calls?.length === 0);
      await Promise.all([ray, ada].map(dismiss));
    });
  });

  test('missed: nobody answers, both pages say so after the ring timeout', { timeout: RING_TIMEOUT_SECS * 1_000 + 60_000 }, async () => {
    await bench.withDiagnostics([ray, ada, bob], async () => {
      const pressed = Date.now();
      await ringBoth();
      await Promise.all([ray, ada].map(page => waitForState(page, 'ENDED', RING_TIMEOUT_SECS * 1_000 + 10_000)));
      const took = Date.now() - pressed;
      assert.ok(took >= RING_TIMEOUT_SECS * 1_000 - 500, `the bell was missed after ${took} ms, before its ${RING_TIMEOUT_SECS} s`);
      for (const page of [ray, ada]) {
        assert.equal((await page.textContent('#call-state')).trim(), 'Missed: nobody answered');
        assert.equal(await page.isHidden('#incoming'), true);
        assert.equal(await page.evaluate(() => window.peercamRingTone.ringing), false);
      }
      assert.equal(await ray.evaluate(() => window.peercamNotices.every(n => n.closed)), true);
      assert.equal((await daemonStatus(sock)).bell?.state, 'missed');
      await waitForBellState(bob, 'bell missed');
      await sleep(2_000);
      for (const page of [ray, ada]) assert.equal((await page.textContent('#call-state')).trim(), 'Missed: nobody answered');
      await Promise.all([ray, ada].map(dismiss));
    });
  });

  test('too late: answering a bell hung up at the door gets unknown_call, whichever comes first, and the page goes on', { timeout: 90_000 }, async () => {
    await bench.withDiagnostics([ray, ada, bob], async () => {
      const link = linkOf(ray);
      for (const order of ['unknown_call first', 'hang-up first']) {
        // Ray's page does not hear of the hang-up until the test lets it: it answers a call
        // the phonebook has already forgotten. In the second round the phonebook's
        // unknown_call waits behind the hang-up, the order a page sees when its answer
        // crosses the hang-up on the wire.
        link.held = [];
        let callId = null;
        link.hold = msg => msg.type === 'hangup' || (order === 'hang-up first' && msg.type === 'error' && msg.call_id === callId);
        await ringBoth();
        callId = await ray.evaluate(() => window.peercamCall.id);
        await press(sock, 'hangup');
        // Answered as soon as the hang-up is held back: the door has closed its side too,
        // and the page would notice that by itself after a while.
        await within(10_000, 'the phonebook\'s hang-up for ray', (async () => { while (!link.held.length) await sleep(10); })());
        assert.equal(await ray.isVisible('#incoming'), true);
        await ray.click('#accept');
        assert.equal(await waitForState(ada, 'ENDED', 10_000), 'Ended: hung up at the device');
        await waitForStatus(sock, 'no calls', status => status.calls?.length === 0);
        const unknown = () => link.fromServer.filter(m => m?.type === 'error' && m.call_id === callId && m.code === 'unknown_call');
        await within(5_000, 'the phonebook\'s unknown_call for ray\'s answer', (async () => { while (!unknown().length) await sleep(10); })());
        if (order === 'unknown_call first') {
          await ray.waitForFunction(() => document.getElementById('call-state')?.dataset.state === 'ERROR', null, { timeout: 5_000 });
          assert.equal((await ray.textContent('#call-state')).trim(), 'Too late: the bell was answered elsewhere or is over');
        }
        assert.deepEqual(link.held.map(m => parse(m).type), order === 'hang-up first' ? ['hangup', 'error'] : ['hangup']);
        link.hold = null;
        for (const message of link.held.splice(0)) link.page.send(message);
        if (order === 'hang-up first') {
          await ray.waitForFunction(() => document.getElementById('call-state')?.dataset.state === 'ENDED', null, { timeout: 5_000 });
        }
        await sleep(300); // whatever came last has been handled
        assert.equal((await ray.textContent('#call-state')).trim(),
          order === 'hang-up first' ? 'Ended: hung up at the device' : 'Too late: the bell was answered elsewhere or is over');
        assert.equal(await ray.evaluate(() => window.peercamRingTone.ringing), false);
        assert.equal(await ray.getAttribute('#connection', 'data-state'), 'open');
        assert.doesNotMatch(String(ray.consoleLog), /pageerror/);
        await Promise.all([ray, ada].map(dismiss));
        assert.equal((await daemonStatus(sock)).bell?.state, 'cancelled');
      }
    });
  });

  test('twice: a second answer from the page keeps its call; the API refuses it', { timeout: 90_000 }, async () => {
    await bench.withDiagnostics([ray, ada, bob], async () => {
      await ringBoth();
      await ada.click('#accept');
      const again = await ada.evaluate(() => {
        try {
          window.peercamCall.accept(null);
          return 'accept() did not throw';
        } catch (err) {
          return err.message;
        }
      });
      assert.match(again, /cannot accept a call that is (already being accepted|ACCEPTED|ESTABLISHED)/);
      assert.equal(await waitForState(ada, 'ESTABLISHED'), 'Connected');
      assert.equal(await waitForState(ray, 'ENDED', 5_000), 'Answered by ada');
      // The same answer once more on the wire, as a confused page would send it.
      const { id, sdp } = await ada.evaluate(() => ({ id: window.peercamCall.id, sdp: window.peercamCall.peerConnection.localDescription.sdp }));
      linkOf(ada).server.send(JSON.stringify({ type: 'accept', call_id: id, sdp }));
      await sleep(1_500);
      assert.equal(await ada.getAttribute('#call-state', 'data-state'), 'ESTABLISHED');
      await waitForMedia(ada, TWO_WAY);
      const status = await daemonStatus(sock);
      assert.equal(status.calls?.find(c => c.callee === 'ada')?.state, 'ESTABLISHED', JSON.stringify(status.calls));
      assert.equal(status.bell?.by, 'ada');
      await ada.click('#hangup');
      await waitForState(ada, 'ENDED', 10_000);
      await Promise.all([ray, ada].map(dismiss));
    });
  });
});
