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
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import {
  Bench, PHONE, checkServedWeb, noSidewaysOverflow, openPage, screenshotPath, serveWebFromDisk, sleep, waitForMedia,
  waitForState, within,
} from './harness.mjs';

const SCREENSHOT_INCOMING = screenshotPath('screenshot-incoming.png');
const SCREENSHOT_CALL = screenshotPath('screenshot-people.png');
/** The other's picture with sound, and one's own picture, all still moving. */
const BOTH_WAYS = {
  media: 'media',
  wanted: 'moving video with sound (and own picture)',
  ready: last => last.width > 0 && last.height > 0 && last.framesDecoded > 0 && last.audioPackets > 0 && last.localWidth > 0,
  moving: (first, last) => last.framesDecoded > first.framesDecoded && last.audioPackets > first.audioPackets,
};

describe('people calling people through the phonebook', () => {
  const bench = new Bench();
  const phonebook = bench.peercam('phonebook');
  let baseUrl;
  /** Alice goes online and is called; Bob calls her. */
  let alice;
  let bob;

  before(async () => {
    await bench.open('peercam-people-');
    baseUrl = await startPhonebook('127.0.0.1:0');

    await checkServedWeb(baseUrl);

    alice = await openPage(await browser(), baseUrl, 'alice');
    bob = await openPage(await browser(), baseUrl, 'bob');
  });

  after(() => bench.close());

  /** Starts `peercam phonebook --listen listen`; resolves with the page's URL it prints. */
  function startPhonebook(listen) {
    return phonebook.start(['phonebook', '--listen', listen]);
  }

  /** The phonebook's list, as scripts see it. */
  async function apiCallees() {
    const response = await within(5_000, 'GET /api/callees', fetch(new URL('/api/callees', baseUrl)));
    return response.json();
  }

  /** A phone-sized Chromium on a fresh profile, so each person has a fake camera of their own. */
  async function browser() {
    const context = await bench.browser(PHONE);
    await serveWebFromDisk(context, baseUrl);
    return context;
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
    await bench.withDiagnostics([alice, bob], async () => {
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
    await bench.withDiagnostics([alice, bob], async () => {
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
      await Promise.all([waitForMedia(alice, BOTH_WAYS), waitForMedia(bob, BOTH_WAYS)]);

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
    await bench.withDiagnostics([alice, bob], async () => {
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
    await bench.withDiagnostics([alice, bob], async () => {
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

  test('early media: a previewed call plays the caller at the callee while it rings, sends nothing back, and accept needs no new answer', { timeout: 90_000 }, async () => {
    await bench.withDiagnostics([alice, bob], async () => {
      // phonebook.js on both ends, each with a Phonebook of its own beside the page's.
      await alice.evaluate(async () => {
        const { Phonebook } = await import('/phonebook.js');
        const pb = new Phonebook(undefined, { agent: 'peercam-test' });
        const early = { pb, call: null, events: [] };
        window.early = early;
        await pb.registerCallee('carol', { kind: 'browser' }, call => {
          early.call = call;
          call.on('preview', stream => early.events.push(`preview ${stream.getTracks().length}`));
          call.on('stateChange', state => early.events.push(state));
          call.preview();
        });
      });
      await bob.evaluate(async () => {
        const { Phonebook } = await import('/phonebook.js');
        const pb = new Phonebook(undefined, { agent: 'peercam-test' });
        const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
        const call = pb.makeCall('carol', { callerName: 'Bob' }, stream);
        const early = { pb, call, events: [] };
        window.early = early;
        call.on('preview', remote => early.events.push(`preview ${remote.getTracks().length}`));
        call.on('stateChange', state => early.events.push(state));
      });
      const media = page => page.evaluate(async () => {
        const pc = window.early.call?.peerConnection;
        const counts = { framesIn: 0, audioIn: 0, sent: 0, state: window.early.call?.state ?? null, events: window.early.events };
        if (!pc || pc.signalingState === 'closed') return counts;
        (await pc.getStats()).forEach(report => {
          if (report.type === 'inbound-rtp' && report.kind === 'video') counts.framesIn += report.framesDecoded ?? 0;
          if (report.type === 'inbound-rtp' && report.kind === 'audio') counts.audioIn += report.packetsReceived ?? 0;
          if (report.type === 'outbound-rtp') counts.sent += report.packetsSent ?? 0;
        });
        return counts;
      });
      const until = async (page, what, check, timeout = 15_000) => {
        const deadline = Date.now() + timeout;
        let last;
        while (Date.now() < deadline) {
          last = await media(page);
          if (check(last)) return last;
          await sleep(200);
        }
        assert.fail(`${page.who}: ${what} within ${timeout} ms; last ${JSON.stringify(last)}`);
      };
      // Bob's picture and sound play at carol while it still rings...
      await until(alice, 'bob\'s picture and sound never played while ringing', m => m.state === 'RINGING' && m.framesIn > 10 && m.audioIn > 0);
      // ...and nothing goes back before accept. Bob applied the early answer.
      const bobRinging = await media(bob);
      assert.equal(bobRinging.state, 'RINGING');
      assert.deepEqual(bobRinging.events, ['CONNECTING', 'RINGING', 'preview 2']);
      assert.equal(bobRinging.framesIn, 0, `carol sent pictures before accepting: ${JSON.stringify(bobRinging)}`);
      assert.equal((await media(alice)).sent, 0, 'carol sent packets before accepting');
      await alice.evaluate(async () => {
        const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
        await window.early.call.accept(stream);
      });
      // Accepted carries the same answer again: applied once, so bob's call is established
      // (a second setRemoteDescription would fail it), and carol's tracks went onto the
      // early answer's senders without a new negotiation.
      const bobNow = await until(bob, 'carol\'s picture and sound never reached bob after accept', m => m.state === 'ESTABLISHED' && m.framesIn > 10 && m.audioIn > 0);
      assert.deepEqual(bobNow.events, ['CONNECTING', 'RINGING', 'preview 2', 'ACCEPTED', 'ESTABLISHED']);
      assert.deepEqual((await media(alice)).events, ['preview 2', 'ACCEPTED', 'ESTABLISHED']);
      await bob.evaluate(() => {
        window.early.call.end();
        window.early.pb.close();
      });
      await alice.waitForFunction(() => window.early.call.state === 'ENDED', null, { timeout: 10_000 });
      await alice.evaluate(() => window.early.pb.close());
    });
  });

  test('names: a taken name is refused with name_taken, a bad one with invalid_name', { timeout: 60_000 }, async () => {
    await bench.withDiagnostics([alice, bob], async () => {
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
    await bench.withDiagnostics([alice, bob], async () => {
      await alice.check('#dnd');
      await bob.waitForSelector('li[data-callee="alice"] .badge[data-presence="dnd"]', { timeout: 10_000 });
      await phonebook.stop();
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
