// The phonebook page: lists the cameras, calls one, shows its video.
import { Phonebook } from './phonebook.js';

const NAME_KEY = 'peercam.callerName';
const TERMINAL = new Set(['ENDED', 'DECLINED', 'ERROR']);
const PRESENCE_TEXT = { available: 'available', ringing: 'ringing', in_call: 'in call' };
const CONNECTION_TEXT = { connecting: 'Connecting…', open: 'Online', closed: 'Offline, reconnecting…' };

const $ = id => document.getElementById(id);
const ui = {
  connection: $('connection'),
  connectionText: $('connection-text'),
  name: $('caller-name'),
  list: $('callees'),
  panel: $('call-panel'),
  state: $('call-state'),
  video: $('remote'),
  hangup: $('hangup'),
  sound: $('sound'),
  dismiss: $('dismiss'),
};

const pb = new Phonebook(undefined, { agent: 'peercam-web/0.1' });
let call = null;
let callees = [];

// localStorage throws in some private modes; the name is a convenience, not a must.
try { ui.name.value = localStorage.getItem(NAME_KEY) ?? ''; } catch {}
ui.name.addEventListener('input', () => {
  try { localStorage.setItem(NAME_KEY, ui.name.value.trim()); } catch {}
});

pb.on('connection', state => {
  ui.connection.dataset.state = state;
  ui.connectionText.textContent = CONNECTION_TEXT[state] ?? state;
  renderCallees();
});

pb.listenForCallees(list => {
  callees = [...list].sort((a, b) => a.name.localeCompare(b.name));
  renderCallees();
});

/** "dev · 1280×720 · 30 fps" from whatever the camera put in its meta. */
function describe(meta = {}) {
  const parts = [];
  if (typeof meta.board === 'string') parts.push(meta.board);
  if (Number.isFinite(meta.width) && Number.isFinite(meta.height)) parts.push(`${meta.width}×${meta.height}`);
  if (Number.isFinite(meta.fps)) parts.push(`${meta.fps} fps`);
  if (meta.audio === true) parts.push('audio');
  return parts.join(' · ');
}

// Entries are updated in place rather than rebuilt, so a focused Call button keeps focus
// when a presence changes.
function renderCallees() {
  const busy = call && !TERMINAL.has(call.state);
  const canCall = pb.connectionState === 'open' && !busy;
  const existing = new Map([...ui.list.children].map(li => [li.dataset.callee, li]));
  for (const callee of callees) {
    const li = existing.get(callee.name) ?? createEntry(callee.name);
    existing.delete(callee.name);
    const badge = li.querySelector('.badge');
    badge.dataset.presence = callee.presence;
    badge.textContent = PRESENCE_TEXT[callee.presence] ?? callee.presence;
    li.querySelector('.callee-meta').textContent = describe(callee.meta ?? {});
    li.querySelector('button.call').disabled = !canCall;
    ui.list.append(li); // appending an existing node moves it: keeps the sort order
  }
  for (const li of existing.values()) li.remove();
}

function createEntry(name) {
  const li = document.createElement('li');
  li.className = 'callee';
  li.dataset.callee = name;
  li.innerHTML = `
    <div class="callee-info">
      <div class="callee-name"><span class="name"></span><span class="badge"></span></div>
      <div class="callee-meta"></div>
    </div>
    <button type="button" class="call">Call</button>`;
  li.querySelector('.name').textContent = name;
  const button = li.querySelector('button.call');
  button.setAttribute('aria-label', `Call ${name}`);
  button.addEventListener('click', () => startCall(name));
  return li;
}

function startCall(name) {
  call?.end();
  const callerName = ui.name.value.trim();
  call = pb.makeCall(name, callerName ? { callerName } : {}, null);
  // Exposed for the browser test (it reads call.peerConnection.getStats()) and for
  // poking at a call from the console.
  window.peercamCall = call;
  const thisCall = call;
  const current = handler => (...args) => { if (call === thisCall) handler(...args); };

  // Final states are shown by the events that carry their reason, just below.
  call.on('stateChange', current(state => { if (!TERMINAL.has(state)) showState(state); }));
  call.on('established', current(stream => {
    ui.video.srcObject = stream;
    // Muted autoplay is always allowed; sound needs the user's tap on "Sound on".
    ui.video.play().catch(() => {});
    ui.sound.hidden = !stream.getAudioTracks().length;
  }));
  call.on('declined', current(reason => showState('DECLINED', reason)));
  call.on('ended', current(reason => showState('ENDED', reason)));
  call.on('error', current(err => showState('ERROR', err.message)));

  ui.panel.hidden = false;
  showState(call.state);
  ui.hangup.focus();
}

function showState(state, detail = '') {
  const callee = call?.callee ?? '';
  const text = {
    INITIAL: `Calling ${callee}…`,
    CONNECTING: `Calling ${callee}…`,
    RINGING: 'Ringing…',
    ACCEPTED: 'Accepted, connecting…',
    ESTABLISHED: 'Connected',
    DECLINED: `Declined: ${detail}`,
    ENDED: `Ended: ${detail}`,
    ERROR: `Error: ${detail}`,
  }[state] ?? state;
  ui.state.textContent = text;
  ui.state.dataset.state = state;

  const over = TERMINAL.has(state);
  // The focused Hang up button is about to vanish; keep keyboard users in the panel.
  const refocus = over && document.activeElement === ui.hangup;
  ui.hangup.hidden = over;
  ui.dismiss.hidden = !over;
  if (refocus) ui.dismiss.focus();
  if (over) {
    ui.video.srcObject = null;
    ui.sound.hidden = true;
    setMuted(true);
  }
  renderCallees();
}

function setMuted(muted) {
  ui.video.muted = muted;
  ui.sound.setAttribute('aria-pressed', String(!muted));
  ui.sound.textContent = muted ? 'Sound on' : 'Sound off';
}

ui.hangup.addEventListener('click', () => call?.end());
ui.sound.addEventListener('click', () => setMuted(!ui.video.muted));
ui.dismiss.addEventListener('click', () => {
  ui.panel.hidden = true;
  ui.state.textContent = '';
  ui.state.dataset.state = '';
});

// Leaving the page should hang up at once rather than leave the camera waiting for ICE
// to time out.
addEventListener('pagehide', () => call?.end());
