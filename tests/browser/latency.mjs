// A benchmark, not a test (node --test does not pick it up): headless Chromium calls the
// daemon (auto-answer, loopback) from the phonebook page and measures
//  * call set-up: from makeCall on the page to the first frame handed to the <video>
//    (requestVideoFrameCallback), p50/p95 over PEERCAM_SETUP_CALLS calls (default 20), and
//    the part of it after ICE and DTLS were up (the wait for a decodable keyframe, plus
//    decoding);
//  * glass-to-glass latency: the dev board stamps each frame with its capture time, the
//    page's statistics overlay reads it back at the frame's expected display time; p50,
//    p95 and max over PEERCAM_LATENCY_FRAMES frames (default 300).
// Prints a table and one JSON line (`LATENCY_JSON …`). Run by tools/latency.
import assert from 'node:assert/strict';
import path from 'node:path';
import { Bench, openPage, sleep, waitForState } from './harness.mjs';

const CALLEE = 'latency-cam';
const CALLS = Number(process.env.PEERCAM_SETUP_CALLS ?? 20);
const FRAMES = Number(process.env.PEERCAM_LATENCY_FRAMES ?? 300);

const quantile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * p))];
};

const bench = new Bench();
try {
  await bench.open('peercam-latency-');
  const daemon = bench.peercam('daemon');
  // PEERCAM_SHOW_LOG=1 (with RUST_LOG=peercam=debug) prints the daemon's last log lines,
  // which carry its side of each call's set-up timings.
  if (process.env.PEERCAM_SHOW_LOG) process.on('exit', () => console.log(String(daemon.err)));
  const url = await daemon.start(['run', '--board', 'dev', '--listen', '127.0.0.1:0', '--name', CALLEE,
    '--control', path.join(bench.tmp, 'control.sock'), '--no-terminal', '--answer', 'auto',
    '--set', 'ice.loopback=true', '--set', 'ice.interfaces=["lo"]',
    // The camera stays on between calls, as it does while anyone watches: set-up is
    // measured without the camera's own start.
    '--set', 'call.idle_stop_secs=600']);
  const page = await openPage(await bench.browser({ viewport: { width: 1280, height: 900 } }), url, 'the page');
  await page.fill('#caller-name', 'Benchmark');

  const setups = [];
  const afterConnected = [];
  await bench.withDiagnostics([page], async () => {
    for (let i = 0; i < CALLS + 1; i++) {
      await page.click(`li[data-callee="${CALLEE}"] button.call`, { timeout: 20_000 });
      await page.waitForFunction(() => window.peercamStats?.firstFrameAt > window.peercamCallStartedAt, null, { timeout: 20_000 });
      const t = await page.evaluate(() => ({
        setup: window.peercamStats.firstFrameAt - window.peercamCallStartedAt,
        after: window.peercamStats.connectedAt === null ? null : window.peercamStats.firstFrameAt - window.peercamStats.connectedAt,
      }));
      // The first call also starts the camera: left out.
      if (i > 0) {
        setups.push(t.setup);
        if (t.after !== null) afterConnected.push(t.after);
      }
      await page.click('#hangup');
      await waitForState(page, 'ENDED', 10_000);
      await sleep(200);
    }

    await page.click(`li[data-callee="${CALLEE}"] button.call`, { timeout: 20_000 });
    await waitForState(page, 'ESTABLISHED', 20_000);
    // A second of warming up, then the frames.
    await sleep(1_000);
    const skip = await page.evaluate(() => window.peercamStats.latencies.length);
    await page.waitForFunction(([skip, want]) => window.peercamStats.latencies.length >= skip + want, [skip, FRAMES], { timeout: 60_000 });
    const latencies = await page.evaluate(([skip, want]) => window.peercamStats.latencies.slice(skip, skip + want), [skip, FRAMES]);
    const frames = await page.evaluate(() => window.peercamStats.frames);
    await page.click('#stats-toggle');
    const overlay = await page.textContent('#stats');
    await page.click('#hangup');
    assert.ok(latencies.length >= FRAMES, `only ${latencies.length} stamped frames`);

    const ms = v => `${v.toFixed(0)} ms`;
    console.log(`Chromium viewer (phonebook page), 1280x720 30 fps, loopback, auto-answer`);
    console.log(`| figure | p50 | p95 | max | n |`);
    console.log(`|---|---|---|---|---|`);
    console.log(`| call set-up: makeCall → first frame | ${ms(quantile(setups, 0.5))} | ${ms(quantile(setups, 0.95))} | ${ms(Math.max(...setups))} | ${setups.length} |`);
    console.log(`| of which ICE+DTLS up → first frame | ${ms(quantile(afterConnected, 0.5))} | ${ms(quantile(afterConnected, 0.95))} | ${ms(Math.max(...afterConnected))} | ${afterConnected.length} |`);
    console.log(`| glass-to-glass latency | ${ms(quantile(latencies, 0.5))} | ${ms(quantile(latencies, 0.95))} | ${ms(Math.max(...latencies))} | ${latencies.length} of ${frames} frames |`);
    console.log(`overlay: ${overlay.replace(/\n/g, ' | ')}`);
    console.log(`LATENCY_JSON ${JSON.stringify({
      receiver: 'chromium',
      setup_p50_ms: quantile(setups, 0.5), setup_p95_ms: quantile(setups, 0.95),
      connected_to_frame_p50_ms: quantile(afterConnected, 0.5), connected_to_frame_p95_ms: quantile(afterConnected, 0.95),
      latency_p50_ms: quantile(latencies, 0.5), latency_p95_ms: quantile(latencies, 0.95), latency_max_ms: Math.max(...latencies),
      frames: latencies.length,
    })}`);
  });
} finally {
  await bench.close();
}
