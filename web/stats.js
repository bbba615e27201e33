// Call statistics for the page's overlay: frame rate, bitrate, round-trip time and packet
// loss from the peer connection's getStats, and glass-to-glass latency when the camera's
// picture carries capture-time stamps (src/media/stamp.rs draws them: a row of 40 black or
// white blocks across the top, `1 0`, 36 bits of milliseconds since the epoch modulo 2^36,
// their parity, `1`).

const BLOCKS = 40;
const TIME_BITS = 36;
const TIME_MOD = 2 ** TIME_BITS;
/** Latency samples kept for the percentiles. */
const KEEP = 2000;

/** Reads a stamp from the top strip of `image` (an ImageData `width` wide), or null. */
export function readStamp(image, width) {
  const size = Math.max(2, Math.floor(width / BLOCKS));
  if (image.height < size) return null;
  const bits = [];
  for (let block = 0; block < BLOCKS; block++) {
    let sum = 0;
    let count = 0;
    for (let y = Math.floor(size / 4); y < Math.floor((size * 3) / 4); y++) {
      for (let x = block * size + Math.floor(size / 4); x < block * size + Math.floor((size * 3) / 4); x++) {
        const i = (y * image.width + x) * 4;
        // Luma of the decoded RGB, close enough to the Y the stamp was drawn in.
        sum += 0.299 * image.data[i] + 0.587 * image.data[i + 1] + 0.114 * image.data[i + 2];
        count++;
      }
    }
    bits.push(count > 0 && sum / count > 128);
  }
  if (!(bits[0] && !bits[1] && bits[39])) return null;
  let value = 0;
  let ones = 0;
  for (let i = 2; i < 38; i++) {
    value = value * 2 + (bits[i] ? 1 : 0);
    if (bits[i]) ones++;
  }
  return bits[38] === (ones % 2 === 1) ? value : null;
}

/** Milliseconds from `stamp` to the wall-clock time `nowMs`, modulo 2^36. */
export function ageMs(stamp, nowMs) {
  return (((nowMs % TIME_MOD) - stamp) % TIME_MOD + TIME_MOD) % TIME_MOD;
}

/** The `p` quantile (0–1) of `values`, or null when there are none. */
export function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

/**
 * Watches `video` (playing the remote stream of `pc`): every second `onUpdate(stats)` gets
 * {fps, kbps, rttMs, lossPercent, latencyMs, latencyP95Ms, frames}; `stats.latencies` keeps
 * the measured glass-to-glass latencies. Returns a function that stops it.
 */
export function watchCall(video, pc, onUpdate) {
  const stats = {
    fps: null, kbps: null, rttMs: null, lossPercent: null, latencyMs: null, latencyP95Ms: null,
    frames: 0, latencies: [], firstFrameAt: null, connectedAt: null,
  };
  // When ICE and DTLS were up, to tell the set-up apart from the wait for a picture.
  const connected = () => {
    if (stats.connectedAt === null && pc.connectionState === 'connected') stats.connectedAt = performance.now();
  };
  pc.addEventListener('connectionstatechange', connected);
  connected();
  let stopped = false;
  let canvas = null;
  let context = null;
  let previous = null;

  const onFrame = (now, metadata) => {
    if (stopped) return;
    stats.frames++;
    if (stats.firstFrameAt === null) stats.firstFrameAt = performance.now();
    const width = metadata.width || video.videoWidth;
    const strip = Math.max(2, Math.floor(width / BLOCKS));
    if (width > 0) {
      if (!canvas || canvas.width !== width) {
        canvas = document.createElement('canvas');
        canvas.width = width;
        canvas.height = strip;
        context = canvas.getContext('2d', { willReadFrequently: true });
      }
      context.drawImage(video, 0, 0, width, strip, 0, 0, width, strip);
      const stamp = readStamp(context.getImageData(0, 0, width, strip), width);
      if (stamp !== null) {
        // When the frame reaches the glass: its expected display time, on the wall clock.
        const shown = performance.timeOrigin + (metadata.expectedDisplayTime ?? now);
        stats.latencies.push(ageMs(stamp, shown));
        if (stats.latencies.length > KEEP) stats.latencies.splice(0, stats.latencies.length - KEEP);
      }
    }
    video.requestVideoFrameCallback(onFrame);
  };
  if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) video.requestVideoFrameCallback(onFrame);

  const poll = async () => {
    if (stopped || pc.connectionState === 'closed') return;
    let inbound = null;
    let pair = null;
    (await pc.getStats()).forEach(report => {
      if (report.type === 'inbound-rtp' && report.kind === 'video') inbound = report;
      if (report.type === 'candidate-pair' && report.nominated && report.state === 'succeeded') pair = report;
    });
    if (inbound) {
      if (previous) {
        const seconds = (inbound.timestamp - previous.timestamp) / 1000;
        if (seconds > 0) {
          stats.fps = (inbound.framesDecoded - previous.framesDecoded) / seconds;
          stats.kbps = ((inbound.bytesReceived - previous.bytesReceived) * 8) / 1000 / seconds;
          const lost = inbound.packetsLost - previous.packetsLost;
          const got = inbound.packetsReceived - previous.packetsReceived;
          stats.lossPercent = lost + got > 0 ? (100 * lost) / (lost + got) : 0;
        }
      }
      previous = inbound;
    }
    stats.rttMs = pair?.currentRoundTripTime !== undefined ? pair.currentRoundTripTime * 1000 : null;
    const recent = stats.latencies.slice(-90);
    stats.latencyMs = percentile(recent, 0.5);
    stats.latencyP95Ms = percentile(recent, 0.95);
    onUpdate(stats);
  };
  const timer = setInterval(() => { poll().catch(() => {}); }, 1000);
  return Object.assign(() => { stopped = true; clearInterval(timer); }, { stats });
}

/** The overlay's text for `stats`. */
export function describeStats(stats) {
  const fixed = (value, digits, unit) => (value === null || value === undefined ? '–' : `${value.toFixed(digits)} ${unit}`);
  const lines = [
    `${fixed(stats.fps, 0, 'fps')} · ${fixed(stats.kbps === null ? null : stats.kbps / 1000, 2, 'Mbit/s')}`,
    `RTT ${fixed(stats.rttMs, 0, 'ms')} · loss ${fixed(stats.lossPercent, 1, '%')}`,
  ];
  if (stats.latencyMs !== null) lines.push(`latency ${stats.latencyMs.toFixed(0)} ms (p95 ${stats.latencyP95Ms.toFixed(0)})`);
  return lines.join('\n');
}
