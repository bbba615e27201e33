// A benchmark, not a test (node --test does not pick it up): the visitor's bell, with two
// headless Chromiums online on the phonebook page as ray and ada (bell.ring), the daemon on
// loopback with a test-tone microphone and a fake speaker. Over PEERCAM_BELL_PRESSES
// presses (default 20) it measures
//  * press → every page ringing: from the `bell` line written to the control socket to the
//    ringing prompt showing, on the later of the two pages;
//  * press → the door's first picture on every page: to the first frame the prompt's
//    <video> presents (requestVideoFrameCallback), on the later page;
//  * answer → sound both ways: from the Answer click (on ray and ada in turn) to the later
//    of the page's first received audio packet and the door's speaker playing the page's
//    first audio buffer (`played_audio_buffers` in the status, polled every 10 ms);
// and, per page, where the time to the picture goes: ringing → the early answer sent,
// → ICE and DTLS up (connectionState), → the first picture.
// The clocks are the machine's wall clock, read in Node and in the pages at sub-millisecond
// resolution. PEERCAM_BELL_CAMERA picks the camera's state at the press: `cold` (stopped,
// as a doorbell's camera is while nobody watches: the press starts it), `warm` (kept
// running between presses), or `both` (the default). Prints a table and one JSON line
// (`BELL_JSON …`). Run by tools/bell-bench.
import assert from 'node:assert/strict';
import path from 'node:path';
import { Bench, PHONE, controlLine, openPage, sleep } from './harness.mjs';

const DEVICE = 'bench-door';
const PRESSES = Number(process.env.PEERCAM_BELL_PRESSES ?? 20);
const MODES = (process.env.PEERCAM_BELL_CAMERA ?? 'both') === 'both' ? ['cold', 'warm'] : [process.env.PEERCAM_BELL_CAMERA];
for (const mode of MODES) assert.ok(['cold', 'warm'].includes(mode), `PEERCAM_BELL_CAMERA is cold, warm or both, not ${mode}`);

const now = () => performance.timeOrigin + performance.now();
const quantile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * p))];
};

async function status(sock) {
  const line = await controlLine(sock, 'status');
  assert.match(line, /^ok /, `status: ${line}`);
  return JSON.parse(line.slice(3));
}

async function until(what, timeout, check) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, `timed out after ${timeout} ms: ${typeof what === 'function' ? what() : what}`);
    await sleep(10);
  }
}

/** Arms the page for the next ring: when the prompt shows, when the door's first frame is presented. */
function arm(page) {
  return page.evaluate(() => {
    const clock = () => performance.timeOrigin + performance.now();
    const marks = { ringAt: null, previewAt: null, connectedAt: null, pictureAt: null };
    window.bellMarks = marks;
    const prompt = document.getElementById('incoming');
    const video = document.getElementById('door-video');
    new MutationObserver((_, observer) => {
      if (prompt.hidden || prompt.dataset.kind !== 'bell') return;
      marks.ringAt ??= clock();
      observer.disconnect();
      // Where the time to the picture goes: the early answer out, ICE and DTLS up.
      const call = window.peercamCall;
      call.on('preview', () => { marks.previewAt ??= clock(); });
      const pc = call.peerConnection;
      const connected = () => { if (pc.connectionState === 'connected') marks.connectedAt ??= clock(); };
      pc.addEventListener('connectionstatechange', connected);
      connected();
    }).observe(prompt, { attributes: true, attributeFilter: ['hidden', 'data-kind'] });
    video.requestVideoFrameCallback(() => { marks.pictureAt ??= clock(); });
  });
}

/** Clicks Answer; resolves with when it was clicked and when the first audio packet came in, on the page's clock. */
function answer(page) {
  return page.evaluate(async () => {
    const clock = () => performance.timeOrigin + performance.now();
    const call = window.peercamCall;
    const answeredAt = clock();
    document.getElementById('accept').click();
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      let packets = 0;
      if (call.peerConnection?.signalingState !== 'closed') {
        (await call.peerConnection.getStats()).forEach(report => {
          if (report.type === 'inbound-rtp' && report.kind === 'audio') packets += report.packetsReceived ?? 0;
        });
      }
      if (packets > 0) return { answeredAt, audioInAt: clock() };
      await new Promise(resolve => setTimeout(resolve, 5));
    }
    return { answeredAt, audioInAt: null };
  });
}

const bench = new Bench();
try {
  await bench.open('peercam-bell-bench-');
  const figures = {};
  for (const mode of MODES) {
    const daemon = bench.peercam(`daemon (${mode})`);
    const sock = path.join(bench.tmp, `control-${mode}.sock`);
    const url = await daemon.start(['run', '--board', 'dev', '--listen', '127.0.0.1:0', '--name', DEVICE, '--control', sock,
      '--no-terminal', '--set', 'ice.loopback=true', '--set', 'ice.interfaces=["lo"]',
      '--set', 'audio.microphone="test"', '--set', 'audio.speaker="fake"', '--set', 'bell.ring=["ray","ada"]',
      '--set', `call.idle_stop_secs=${mode === 'cold' ? 1 : 3600}`]);
    const pages = [];
    for (const name of ['ray', 'ada']) {
      const page = await openPage(await bench.browser(PHONE), url, name);
      await page.fill('#reachable-name', name);
      await page.click('#go-online');
      await page.waitForSelector('#go-online[aria-pressed="true"]', { timeout: 15_000 });
      pages.push(page);
    }
    const rows = { ring: [], picture: [], audio: [], preview: [], connected: [], decoded: [] };
    await bench.withDiagnostics(pages, async () => {
      for (const page of pages) await page.waitForSelector(`li[data-callee="${pages[1 - pages.indexOf(page)].who}"]`, { timeout: 10_000 });
      // The first press also warms up both pages' WebRTC: left out.
      for (let i = 0; i < PRESSES + 1; i++) {
        if (mode === 'cold') await until('the camera to stop', 10_000, async () => !(await status(sock)).camera_running);
        await Promise.all(pages.map(page => page.evaluate(() => document.getElementById('dismiss').click())));
        await Promise.all(pages.map(arm));
        const pressedAt = now();
        const reply = await controlLine(sock, 'bell');
        assert.match(reply, /^ok ringing ray, ada/, `the press: ${reply}`);
        let last = null;
        const marks = await until(() => `both pages ringing with the door's picture (press ${i}, ${mode}; marks ${JSON.stringify(last)})`, 15_000, async () => {
          last = await Promise.all(pages.map(page => page.evaluate(() => window.bellMarks)));
          return last.every(m => Object.values(m).every(at => at !== null)) && last;
        });
        const answerer = pages[i % 2];
        const other = pages[1 - (i % 2)];
        const [answered, playedAt] = await Promise.all([
          answer(answerer),
          until('the door playing the page\'s sound', 10_000, async () => {
            const call = (await status(sock)).calls?.find(c => c.callee === answerer.who);
            return call?.played_audio_buffers > 0 && now();
          }),
        ]);
        assert.ok(answered.audioInAt !== null, `${answerer.who} received no sound within 10 s of answering`);
        if (i > 0) {
          rows.ring.push(Math.max(...marks.map(m => m.ringAt)) - pressedAt);
          rows.picture.push(Math.max(...marks.map(m => m.pictureAt)) - pressedAt);
          rows.audio.push(Math.max(answered.audioInAt, playedAt) - answered.answeredAt);
          for (const m of marks) {
            rows.preview.push(m.previewAt - m.ringAt);
            rows.connected.push(m.connectedAt - m.previewAt);
            rows.decoded.push(m.pictureAt - m.connectedAt);
          }
        }
        await other.waitForFunction(() => document.getElementById('call-state')?.dataset.state === 'ENDED', null, { timeout: 5_000 });
        await answerer.click('#hangup');
        await until('the calls to end', 10_000, async () => (await status(sock)).calls?.length === 0);
      }
    });
    figures[mode] = rows;
    for (const page of pages) await page.context().close();
    await daemon.stop();
  }

  const ms = v => `${v.toFixed(0)} ms`;
  const label = { cold: 'camera off at the press', warm: 'camera already running' };
  console.log(`The bell: two pages online (headless Chromium), release daemon, loopback, dev board 1280x720 30 fps, ${PRESSES} presses`);
  console.log('| figure | camera | p50 | p95 | max |');
  console.log('|---|---|---|---|---|');
  const names = {
    ring: 'press → every page ringing',
    picture: 'press → the door\'s first picture on every page',
    audio: 'answer → sound both ways',
    preview: '(each page) ringing → early answer sent',
    connected: '(each page) early answer sent → ICE and DTLS up',
    decoded: '(each page) ICE and DTLS up → first picture',
  };
  for (const key of Object.keys(names)) {
    for (const mode of MODES) {
      const values = figures[mode][key];
      console.log(`| ${names[key]} | ${label[mode]} | ${ms(quantile(values, 0.5))} | ${ms(quantile(values, 0.95))} | ${ms(Math.max(...values))} |`);
    }
  }
  const json = {};
  for (const mode of MODES) {
    for (const key of ['ring', 'picture', 'audio']) {
      const values = figures[mode][key];
      json[`${mode}_${key}_p50_ms`] = Math.round(quantile(values, 0.5));
      json[`${mode}_${key}_p95_ms`] = Math.round(quantile(values, 0.95));
    }
  }
  console.log(`BELL_JSON ${JSON.stringify({ presses: PRESSES, ...json })}`);
} finally {
  await bench.close();
}
