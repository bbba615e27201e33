// The phonebook page: lists cameras and people, calls one, shows its video; goes online
// to be called by others (and rung by a camera's bell: the door's picture while it rings,
// answer, open the door); chats over the call's data channel.
import { Phonebook } from './phonebook.js';
import { describeStats, watchCall } from './stats.js';

const NAME_KEY = 'peercam.callerName';
const REACHABLE_KEY = 'peercam.reachableName';
const TOKEN_KEY = 'peercam.token';
const TERMINAL = new Set(['ENDED', 'DECLINED', 'ERROR']);
const PRESENCE_TEXT = { available: 'available', ringing: 'ringing', in_call: 'in call', dnd: 'do not disturb' };
const CONNECTION_TEXT = { connecting: 'Connecting…', open: 'Online', closed: 'Offline, reconnecting…' };
const DECLINE_REASON = 'Declined';
const BUSY_REASON = 'Busy';
const DND_REASON = 'Do not disturb';
const MAX_MESSAGES = 200;
const BUTTON_TEXT = { accept: 'Accept', decline: 'Decline', hangup: 'Hang up', dnd: 'Do not disturb' };
const IDLE_HINT = 'Going online turns on your camera and microphone so you can answer calls.';
const BELL_STATE_TEXT = { ringing: 'bell ringing', missed: 'bell missed', cancelled: 'bell cancelled' };

const $ = id => document.getElementById(id);
const ui = {
  connection: $('connection'),
  connectionText: $('connection-text'),
  name: $('caller-name'),
  reachableName: $('reachable-name'),
  goOnline: $('go-online'),
  reachableStatus: $('reachable-status'),
  dndField: $('dnd-field'),
  dnd: $('dnd'),
  list: $('callees'),
  incoming: $('incoming'),
  incomingTitle: $('incoming-title'),
  incomingCaller: $('incoming-caller'),
  incomingWhat: $('incoming-what'),
  doorScreen: $('door-screen'),
  doorVideo: $('door-video'),
  accept: $('accept'),
  decline: $('decline'),
  panel: $('call-panel'),
  heading: $('call-heading'),
  state: $('call-state'),
  video: $('remote'),
  local: $('local'),
  hangup: $('hangup'),
  openDoor: $('open-door'),
  sound: $('sound'),
  dismiss: $('dismiss'),
  messages: $('messages'),
  messageForm: $('message-form'),
  messageInput: $('message-input'),
  messageSend: $('message-send'),
  tokenField: $('token-field'),
  token: $('token'),
  tokenUse: $('token-use'),
  tokenStatus: $('token-status'),
  stats: $('stats'),
  statsToggle: $('stats-toggle'),
};
/** Stops watching the current call's statistics. */
let stopStats = null;

// localStorage throws in some private modes; the names are a convenience, not a must.
const load = key => { try { return localStorage.getItem(key) ?? ''; } catch { return ''; } };
const save = (key, value) => { try { localStorage.setItem(key, value); } catch {} };

// A link may carry the token (`…/#token=…`): keep it, and take it out of the address bar.
const linkToken = new URLSearchParams(location.hash.slice(1)).get('token');
if (linkToken) {
  save(TOKEN_KEY, linkToken);
  history.replaceState(null, '', location.pathname + location.search);
}
const pb = new Phonebook(undefined, { agent: 'peercam-web/0.1', token: load(TOKEN_KEY) });
/** The call shown in the panel (running or just over). */
let call = null;
/** An incoming call waiting on the prompt. */
let ringing = null;
let callees = [];
/** While reachable: {name, stream}; stream is null without camera and microphone. */
let online = null;
/** True between pressing "Go online" and the phonebook's answer. */
let goingOnline = false;

ui.name.value = load(NAME_KEY);
ui.reachableName.value = load(REACHABLE_KEY);
ui.name.addEventListener('input', () => save(NAME_KEY, ui.name.value.trim()));
ui.reachableName.addEventListener('input', () => save(REACHABLE_KEY, ui.reachableName.value.trim()));
// People who called us see our name in the prompt: keep it current while online.
ui.name.addEventListener('change', () => {
  if (online) pb.registerCallee(online.name, reachableMeta(), onIncomingCall).catch(() => {});
});

pb.on('connection', state => {
  ui.connection.dataset.state = state;
  ui.connectionText.textContent = CONNECTION_TEXT[state] ?? state;
  renderCallees();
  // The phonebook module registers our name again by itself once it is back.
  if (online && !goingOnline) {
    if (state === 'open') onlineStatus();
    else setReachableStatus('Reconnecting to the phonebook… you are reachable again once it is back.');
  }
});

// The token field shows where the phonebook wants one, or when the one given is refused.
pb.on('auth', auth => {
  ui.tokenField.hidden = auth === 'open';
  if (auth !== 'open') ui.tokenStatus.textContent = pb.token ? 'Signed in with your token.' : 'This phonebook lets in only people with a token or passphrase.';
});
pb.on('error', err => {
  if (err.code !== 'unauthorized' && err.code !== 'forbidden') return;
  ui.tokenField.hidden = false;
  ui.tokenStatus.textContent = err.message;
});
function useToken() {
  const token = ui.token.value.trim();
  save(TOKEN_KEY, token);
  ui.token.value = '';
  ui.tokenStatus.textContent = token ? 'Checking…' : 'Token removed.';
  pb.setToken(token);
}
ui.tokenUse.addEventListener('click', useToken);
ui.token.addEventListener('keydown', event => { if (event.key === 'Enter') useToken(); });

pb.on('registrationLost', (name, err) => {
  if (online?.name !== name) return;
  goOffline();
  setReachableStatus(`You are offline: ${explainRegisterError(err, name)}`, 'error');
});

pb.listenForCallees(list => {
  callees = [...list].sort((a, b) => a.name.localeCompare(b.name));
  renderCallees();
});

/** "camera · dev · 1280×720 · 30 fps" or "browser · Alice", from whatever the callee put in its meta. */
function describe(meta = {}) {
  const parts = [];
  if (typeof meta.kind === 'string') parts.push(meta.kind);
  if (meta.kind === 'browser' && typeof meta.callerName === 'string' && meta.callerName) parts.push(meta.callerName);
  if (typeof meta.board === 'string') parts.push(meta.board);
  if (Number.isFinite(meta.width) && Number.isFinite(meta.height)) parts.push(`${meta.width}×${meta.height}`);
  if (Number.isFinite(meta.fps)) parts.push(`${meta.fps} fps`);
  if (meta.audio === true) parts.push('audio');
  return parts.join(' · ');
}

const isLive = c => c !== null && !TERMINAL.has(c.state);

// Entries are updated in place rather than rebuilt, so a focused Call button keeps focus
// when a presence changes.
function renderCallees() {
  const canCall = pb.connectionState === 'open' && !isLive(call) && !ringing;
  const existing = new Map([...ui.list.children].map(li => [li.dataset.callee, li]));
  for (const callee of callees) {
    const li = existing.get(callee.name) ?? createEntry(callee.name);
    existing.delete(callee.name);
    const own = online?.name === callee.name;
    li.dataset.kind = typeof callee.meta?.kind === 'string' ? callee.meta.kind : '';
    li.querySelector('.you-tag').hidden = !own;
    const badge = li.querySelector('.badge');
    badge.dataset.presence = callee.presence;
    badge.textContent = PRESENCE_TEXT[callee.presence] ?? callee.presence;
    li.querySelector('.callee-meta').textContent = describe(callee.meta ?? {});
    renderBellState(li.querySelector('.bell-state'), callee.meta?.bell);
    // A callee on do not disturb can still be called: it declines with its own reason.
    li.querySelector('button.call').disabled = !canCall || own;
    ui.list.append(li); // appending an existing node moves it: keeps the sort order
  }
  for (const li of existing.values()) li.remove();
}

/** A camera's bell as its registration tells it (`meta.bell`): ringing, answered by whom, missed. */
function renderBellState(el, bell) {
  const state = typeof bell?.state === 'string' ? bell.state : '';
  const by = typeof bell?.by === 'string' ? bell.by : '';
  const text = state === 'answered' ? (by ? `answered by ${by}` : 'bell answered') : BELL_STATE_TEXT[state];
  el.hidden = !text;
  el.textContent = text ?? '';
  el.dataset.bell = text ? state : '';
}

function createEntry(name) {
  const li = document.createElement('li');
  li.className = 'callee';
  li.dataset.callee = name;
  li.innerHTML = `
    <div class="callee-info">
      <div class="callee-name"><span class="name"></span><span class="you-tag" hidden>(you)</span><span class="badge"></span><span class="bell-state" hidden></span></div>
      <div class="callee-meta"></div>
    </div>
    <button type="button" class="call">Call</button>`;
  li.querySelector('.name').textContent = name;
  const button = li.querySelector('button.call');
  button.setAttribute('aria-label', `Call ${name}`);
  button.addEventListener('click', () => startCall(name));
  return li;
}

// ---- Outgoing calls ---------------------------------------------------------------------

async function startCall(name) {
  if (isLive(call)) call.end();
  const callerName = ui.name.value.trim();
  // People get our camera and microphone if we have them on. A camera with a speaker
  // (an intercom) gets our microphone, if the browser lets us have it; other cameras
  // only send.
  const meta = callees.find(c => c.name === name)?.meta ?? {};
  let stream = null;
  if (meta.kind === 'browser') {
    stream = online?.stream ?? null;
  } else if (meta.speaker) {
    stream = online?.stream ?? await microphoneOnly();
  }
  // For benchmarks (tools/latency): when the call was placed, on the page's clock.
  window.peercamCallStartedAt = performance.now();
  const newCall = pb.makeCall(name, callerName ? { callerName } : {}, stream);
  if (stream && stream !== online?.stream) {
    // Taken for this call only: the microphone goes off when the call is over.
    const release = () => stream.getTracks().forEach(track => track.stop());
    for (const event of ['declined', 'ended', 'error']) newCall.on(event, release);
  }
  showCall(newCall, stream);
}

/** The microphone alone, or null when there is none or the person says no. */
async function microphoneOnly() {
  if (!navigator.mediaDevices?.getUserMedia) return null;
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch {
    return null;
  }
}

// ---- Incoming calls ---------------------------------------------------------------------

function reachableMeta() {
  return { kind: 'browser', callerName: ui.name.value.trim() || online?.name || ui.reachableName.value.trim() };
}

function onIncomingCall(incoming) {
  if (isLive(call) || ringing) return declineQuietly(incoming, BUSY_REASON);
  if (ui.dnd.checked) return declineQuietly(incoming, DND_REASON);
  ringing = incoming;
  // The current call, for the tests and the console, whichever way it goes.
  window.peercamCall = incoming;
  const bell = incoming.isBell;
  const caller = peerNameOf(incoming);
  ui.incoming.dataset.kind = bell ? 'bell' : 'call';
  ui.incomingTitle.textContent = bell ? 'Doorbell' : 'Incoming call';
  ui.incomingCaller.textContent = caller;
  ui.incomingWhat.textContent = bell ? 'is ringing: someone is at the door' : 'is calling you';
  ui.accept.textContent = bell ? 'Answer' : 'Accept';
  ui.doorScreen.hidden = !bell;
  if (bell) {
    // phonebook.js answers a bell's offer at once: the door plays here while it rings,
    // and nothing of ours goes to the door before Answer.
    incoming.on('preview', stream => {
      if (ringing !== incoming) return;
      ui.doorVideo.srcObject = stream;
      ui.doorVideo.play().catch(() => {});
    });
  }
  ui.incoming.hidden = false;
  document.title = bell ? `${caller} is ringing · peercam` : `${caller} is calling · peercam`;
  ui.accept.focus({ preventScroll: true });
  ringTone.start();
  notifyRinging();
  // The caller gave up, the phonebook went away, or (a bell) someone else answered or
  // nobody did, before anyone answered here.
  const gone = detail => {
    if (ringing !== incoming) return;
    closePrompt();
    if (bell) showBellOutcome(incoming, detail);
    else setReachableStatus(`Missed call from ${caller}`);
  };
  incoming.on('ended', gone);
  incoming.on('error', gone);
  renderCallees();
}

function declineQuietly(incoming, reason) {
  try { incoming.decline(reason); } catch {}
}

function callerNameOf(meta) {
  const name = typeof meta?.callerName === 'string' ? meta.callerName.trim() : '';
  return name || 'Someone';
}

function closePrompt() {
  ringing = null;
  ui.incoming.hidden = true;
  ui.doorVideo.srcObject = null;
  ringTone.stop();
  closeNotice();
  document.title = 'peercam';
  renderCallees();
}

ui.accept.addEventListener('click', async () => {
  const incoming = ringing;
  if (!incoming) return;
  closePrompt();
  let stream = online?.stream ?? null;
  let borrowed = false;
  if (incoming.isBell) {
    // The door hears us but does not see us (its offer asks for no picture): lend the
    // microphone alone, so our own picture does not show as if it were sent.
    const microphone = stream?.getAudioTracks() ?? [];
    if (microphone.length) {
      stream = new MediaStream(microphone);
    } else {
      stream = await microphoneOnly();
      borrowed = stream !== null;
    }
  }
  if (borrowed) {
    const release = () => stream.getTracks().forEach(track => track.stop());
    for (const event of ['declined', 'ended', 'error']) incoming.on(event, release);
    if (TERMINAL.has(incoming.state)) release();
  }
  try {
    const answered = incoming.accept(stream);
    showCall(incoming, stream);
    answered.catch(() => {}); // failures arrive as the call's 'error' event
  } catch (err) {
    // It ended while the microphone was being asked for.
    if (incoming.isBell && TERMINAL.has(incoming.state)) showBellOutcome(incoming, incoming.endReason ?? '');
    else setReachableStatus(`Could not answer: ${err.message}`, 'error');
  }
});

ui.decline.addEventListener('click', () => {
  const incoming = ringing;
  if (!incoming) return;
  closePrompt();
  declineQuietly(incoming, DECLINE_REASON);
});

/**
 * A bell that stopped ringing here without being answered here: someone else answered,
 * nobody did, or the door hung up. Shown in the call panel until closed, like the end of
 * any call.
 */
function showBellOutcome(bellCall, reason) {
  if (isLive(call)) return;
  stopStats?.();
  stopStats = null;
  call = bellCall;
  ui.messages.replaceChildren();
  ui.heading.textContent = headingOf(bellCall);
  ui.panel.dataset.picture = '';
  ui.panel.hidden = false;
  showState(bellCall.state, reason instanceof Error ? errorText(bellCall, reason) : String(reason ?? ''));
  const at = new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  setReachableStatus(`${peerNameOf(bellCall)} rang at ${at}: ${ui.state.textContent}`);
}

// ---- Ringing: the tone and the notification ---------------------------------------------

/**
 * Two short tones every two seconds while a call or the bell rings, made with WebAudio (no
 * sound file to embed). A browser that blocks sound until the page is touched keeps the
 * context suspended: the tone is then skipped, never an error. Going online is a touch,
 * and unlocks it for later rings.
 */
const ringTone = {
  context: null,
  timer: null,
  /** How many times it sounded, for the tests. */
  beeps: 0,
  get ringing() { return this.timer !== null; },
  unlock() {
    this._context()?.resume().catch(() => {});
  },
  start() {
    if (this.timer !== null) return;
    this.timer = setInterval(() => this._ring(), 2000);
    this._ring();
  },
  stop() {
    clearInterval(this.timer);
    this.timer = null;
  },
  _context() {
    if (this.context) return this.context;
    const Context = window.AudioContext ?? window.webkitAudioContext;
    if (!Context) return null;
    try { this.context = new Context(); } catch { return null; }
    return this.context;
  },
  _ring() {
    const context = this._context();
    if (!context) return;
    if (context.state !== 'running') {
      // Tones queued on a suspended context would all sound at once when it resumes.
      context.resume().catch(() => {});
      return;
    }
    try {
      const start = context.currentTime;
      for (const [offset, frequency] of [[0, 880], [0.45, 660]]) {
        const oscillator = context.createOscillator();
        const gain = context.createGain();
        oscillator.frequency.value = frequency;
        const t = start + offset;
        gain.gain.setValueAtTime(0, t);
        gain.gain.linearRampToValueAtTime(0.2, t + 0.02);
        gain.gain.setValueAtTime(0.2, t + 0.33);
        gain.gain.linearRampToValueAtTime(0, t + 0.36);
        oscillator.connect(gain).connect(context.destination);
        oscillator.start(t);
        oscillator.stop(t + 0.37);
      }
      this.beeps++;
    } catch {}
  },
};
window.peercamRingTone = ringTone;

/** The system notification of what rings here, shown while the tab is hidden. */
let ringNotice = null;

function notifyRinging() {
  if (!ringing || ringNotice || document.visibilityState !== 'hidden') return;
  if (typeof Notification !== 'function' || Notification.permission !== 'granted') return;
  const who = peerNameOf(ringing);
  const [title, body] = ringing.isBell
    ? [`${who}: someone is at the door`, 'Open the page to see who it is and answer.']
    : [`${who} is calling you`, 'Open the page to answer.'];
  try {
    const notice = new Notification(title, { body, tag: `peercam-${ringing.id}`, requireInteraction: true });
    notice.onclick = () => {
      window.focus();
      notice.close();
    };
    ringNotice = notice;
  } catch {
    // Chrome on Android shows notifications only through a service worker: the tone and
    // the page's title are all there is then.
  }
}

function closeNotice() {
  ringNotice?.close();
  ringNotice = null;
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'hidden') notifyRinging();
  else closeNotice();
});

/** Asked on Go online, a click: browsers ask people for permission only from one. */
function askForNotifications() {
  if (typeof Notification !== 'function' || Notification.permission !== 'default') return;
  try {
    Notification.requestPermission()?.catch?.(() => {});
  } catch {}
}

// ---- The call panel ---------------------------------------------------------------------

/** Who is at the other end, as shown in the panel and the message log. */
function peerNameOf(c) {
  if (c.isBell) return c.device;
  return c.isIncoming ? callerNameOf(c.metaData) : c.callee;
}

function headingOf(c) {
  return c.isBell ? `Doorbell · ${c.device}` : peerNameOf(c);
}

/** How a call's end reads: a bell rung off at the door says who answered, or that nobody did. */
function endText(c, reason) {
  if (c?.isBell) {
    const answered = /^answered by (.+)$/.exec(reason);
    if (answered) return `Answered by ${answered[1]}`;
    if (reason === 'missed') return 'Missed: nobody answered';
  }
  return `Ended: ${reason}`;
}

function errorText(c, err) {
  // An answer that came after the call was gone: answered elsewhere, missed or hung up.
  if (err?.code === 'unknown_call' && c?.isBell) return 'Too late: the bell was answered elsewhere or is over';
  if (err?.code === 'unknown_call') return 'Too late: the caller is gone';
  return err?.message ?? String(err);
}

function showCall(newCall, localStream) {
  call = newCall;
  window.peercamCall = call;
  const thisCall = call;
  const current = handler => (...args) => { if (call === thisCall) handler(...args); };

  ui.messages.replaceChildren();
  ui.messageInput.value = '';
  ui.heading.textContent = headingOf(call);
  ui.panel.dataset.picture = '';
  const showLocal = Boolean(localStream?.getVideoTracks().length);
  ui.local.srcObject = showLocal ? localStream : null;
  ui.local.hidden = !showLocal;
  if (showLocal) ui.local.play().catch(() => {});

  // Final states are shown by the events that carry their reason, just below.
  call.on('stateChange', current(state => { if (!TERMINAL.has(state)) showState(state); }));
  call.on('established', current(stream => {
    ui.video.srcObject = stream;
    stopStats?.();
    stopStats = watchCall(ui.video, thisCall.peerConnection, stats => {
      ui.stats.textContent = describeStats(stats);
    });
    window.peercamStats = stopStats.stats;
    ui.panel.dataset.picture = stream.getVideoTracks().length ? 'yes' : 'no';
    const audio = stream.getAudioTracks().length > 0;
    ui.sound.hidden = !audio;
    // Sound needs a tap on this page first (autoplay rules); muted playback always works,
    // and "Sound on" is there for the rest.
    setMuted(!(audio && navigator.userActivation?.hasBeenActive));
    ui.video.play().catch(() => {
      setMuted(true);
      ui.video.play().catch(() => {});
    });
  }));
  call.on('declined', current(reason => showState('DECLINED', reason)));
  call.on('ended', current(reason => showState('ENDED', reason)));
  call.on('error', current(err => showState('ERROR', errorText(thisCall, err))));
  call.on('dataopen', current(renderChat));
  call.on('data', current(text => receive(thisCall, text)));

  ui.panel.hidden = false;
  showState(call.state);
  ui.panel.scrollIntoView?.({ block: 'start' });
  ui.hangup.focus({ preventScroll: true });
}

function showState(state, detail = '') {
  const peer = call ? peerNameOf(call) : '';
  const text = {
    INITIAL: `Calling ${peer}…`,
    CONNECTING: `Calling ${peer}…`,
    RINGING: call?.isIncoming ? 'Answering…' : 'Ringing…',
    ACCEPTED: call?.isIncoming ? 'Connecting…' : 'Accepted, connecting…',
    ESTABLISHED: 'Connected',
    DECLINED: `Declined: ${detail}`,
    ENDED: endText(call, detail),
    ERROR: call?.isBell && detail.startsWith('Too late') ? detail : `Error: ${detail}`,
  }[state] ?? state;
  ui.state.textContent = text;
  ui.state.dataset.state = state;

  const over = TERMINAL.has(state);
  // The focused Hang up button is about to vanish; keep keyboard users in the panel.
  const refocus = over && [ui.hangup, ui.openDoor].includes(document.activeElement);
  ui.hangup.hidden = over;
  ui.openDoor.hidden = over || !(call?.isBell && call.metaData.door === true);
  ui.dismiss.hidden = !over;
  if (refocus) ui.dismiss.focus();
  if (over) {
    stopStats?.();
    stopStats = null;
    ui.stats.textContent = '';
    ui.video.srcObject = null;
    ui.local.srcObject = null;
    ui.local.hidden = true;
    ui.sound.hidden = true;
    setMuted(true);
    releaseStreamIfUnused();
  }
  renderChat();
  renderCallees();
}

function setMuted(muted) {
  ui.video.muted = muted;
  ui.sound.setAttribute('aria-pressed', String(!muted));
  ui.sound.textContent = muted ? 'Sound on' : 'Sound off';
}

ui.hangup.addEventListener('click', () => call?.end());
ui.openDoor.addEventListener('click', () => {
  if (!call) return;
  try {
    call.openDoor();
    addMessage('You asked to open the door', 'me');
  } catch (err) {
    addMessage(`Not sent: ${err.message}`, 'error');
  }
});
ui.statsToggle.addEventListener('click', () => {
  ui.stats.hidden = !ui.stats.hidden;
  ui.statsToggle.setAttribute('aria-pressed', String(!ui.stats.hidden));
});
ui.sound.addEventListener('click', () => {
  setMuted(!ui.video.muted);
  ui.video.play().catch(() => {});
});
ui.dismiss.addEventListener('click', () => {
  ui.panel.hidden = true;
  ui.state.textContent = '';
  ui.state.dataset.state = '';
  ui.messages.replaceChildren();
});

// ---- Messages on the data channel -------------------------------------------------------

function renderChat() {
  const usable = isLive(call) && call.dataChannelOpen;
  ui.messageInput.disabled = !usable;
  ui.messageSend.disabled = !usable;
  ui.openDoor.disabled = !usable;
}

function addMessage(text, kind) {
  const li = document.createElement('li');
  li.className = `message message-${kind}`;
  li.textContent = text;
  ui.messages.append(li);
  while (ui.messages.children.length > MAX_MESSAGES) ui.messages.firstElementChild.remove();
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function receive(fromCall, text) {
  const peer = peerNameOf(fromCall);
  let event = null;
  try {
    const value = JSON.parse(text);
    if (value !== null && typeof value === 'object' && typeof value.event === 'string') event = value;
  } catch {}
  const line = event ? describeEvent(event, peer) : null;
  if (line) addMessage(line.text, line.kind);
  else addMessage(`${peer}: ${text}`, 'peer');
}

/** A device event (see the camera's data channel) in words, or null when unknown. */
function describeEvent(event, peer) {
  switch (event.event) {
    case 'accepted':
      return { text: 'Call accepted', kind: 'event' };
    case 'viewers': {
      const count = Number(event.count);
      if (!Number.isInteger(count) || count < 0) return null;
      return { text: `${count} ${count === 1 ? 'person' : 'people'} watching`, kind: 'event' };
    }
    case 'button': {
      const button = typeof event.button === 'string' ? event.button : '';
      return { text: `Someone pressed ${BUTTON_TEXT[button] ?? (button || 'a button')} on ${peer}`, kind: 'event' };
    }
    case 'ringing': {
      const caller = typeof event.caller === 'string' && event.caller ? event.caller : 'Someone';
      return { text: `${caller} is calling ${peer}`, kind: 'event' };
    }
    case 'text': {
      if (typeof event.text !== 'string') return null;
      const from = typeof event.from === 'string' && event.from && event.from !== 'device' ? event.from : peer;
      return { text: `${from}: ${event.text}`, kind: 'peer' };
    }
    case 'shutting_down':
      return { text: 'Camera is shutting down', kind: 'event' };
    case 'bell':
      return describeBell(event, peer);
    case 'door': {
      if (event.open === true) {
        const by = typeof event.by === 'string' && event.by ? event.by : 'someone';
        const secs = Number.isFinite(event.secs) ? ` for ${event.secs} s` : '';
        return { text: `Door opened by ${by}${secs}`, kind: 'event' };
      }
      const reason = typeof event.reason === 'string' && event.reason ? `: ${event.reason}` : '';
      return { text: `Door not opened${reason}`, kind: 'error' };
    }
    default:
      return null;
  }
}

function describeBell(event, peer) {
  const names = list => (Array.isArray(list) ? list.filter(n => typeof n === 'string') : []);
  switch (event.state) {
    case 'ringing': {
      const rung = names(event.ringing);
      return { text: `The bell at ${peer} rings${rung.length ? ` ${rung.join(', ')}` : ''}`, kind: 'event' };
    }
    case 'answered': {
      const by = typeof event.by === 'string' && event.by ? event.by : 'someone';
      return { text: by === online?.name ? 'You answered the bell' : `${by} answered the bell`, kind: 'event' };
    }
    case 'missed':
      return { text: `Nobody answered the bell at ${peer}`, kind: 'event' };
    case 'cancelled':
      return { text: `The bell at ${peer} was hung up`, kind: 'event' };
    default:
      return null;
  }
}

ui.messageForm.addEventListener('submit', event => {
  event.preventDefault();
  const text = ui.messageInput.value;
  if (!call || !text.trim()) return;
  try {
    call.send(text);
    addMessage(`You: ${text}`, 'me');
    ui.messageInput.value = '';
  } catch (err) {
    addMessage(`Not sent: ${err.message}`, 'error');
  }
  ui.messageInput.focus();
});

// ---- Being reachable --------------------------------------------------------------------

function setReachableStatus(text, kind = '') {
  ui.reachableStatus.textContent = text;
  ui.reachableStatus.dataset.kind = kind;
}

function renderReachable() {
  const on = Boolean(online) && !goingOnline;
  ui.goOnline.textContent = on ? 'Go offline' : goingOnline ? 'Going online…' : 'Go online';
  ui.goOnline.setAttribute('aria-pressed', String(on));
  ui.goOnline.classList.toggle('secondary', on);
  ui.goOnline.disabled = goingOnline;
  ui.reachableName.disabled = Boolean(online) || goingOnline;
  ui.dndField.hidden = !on;
  if (!on) ui.dnd.checked = false;
}

function onlineStatus() {
  const video = Boolean(online.stream?.getVideoTracks().length);
  const audio = Boolean(online.stream?.getAudioTracks().length);
  const what = video && audio ? 'your camera and microphone are on'
    : video ? 'your camera is on, no microphone'
      : audio ? 'your microphone is on, no camera'
        : 'without camera or microphone';
  setReachableStatus(`Online as ${online.name}: people can call you (${what}).`);
}

/** Camera and microphone if we can have them, else whatever we can get, else nothing. */
async function getLocalStream() {
  if (!navigator.mediaDevices?.getUserMedia) {
    return { stream: null, why: 'this page needs HTTPS to use the camera' };
  }
  let lastError = null;
  for (const constraints of [{ video: true, audio: true }, { video: true }, { audio: true }]) {
    try {
      return { stream: await navigator.mediaDevices.getUserMedia(constraints), why: '' };
    } catch (err) {
      lastError = err;
      // Refused by the person: asking for less will not change their mind.
      if (err.name === 'NotAllowedError' || err.name === 'SecurityError') break;
    }
  }
  return { stream: null, why: lastError?.message || 'no camera or microphone' };
}

function explainRegisterError(err, name) {
  if (err.code === 'name_taken') return `the name "${name}" is taken; pick another one`;
  if (err.code === 'invalid_name') return 'a name has 1 to 64 letters, digits, spaces, dots, dashes or underscores';
  return err.message;
}

async function goOnline() {
  const name = ui.reachableName.value.trim();
  if (!name) {
    setReachableStatus('Type the name people should call you by.', 'error');
    ui.reachableName.focus();
    return;
  }
  ui.reachableName.value = name;
  goingOnline = true;
  renderReachable();
  setReachableStatus('Turning on your camera and microphone…');
  const { stream, why } = await getLocalStream();
  setReachableStatus('Going online…');
  try {
    online = { name, stream };
    await pb.registerCallee(name, reachableMeta(), onIncomingCall);
    onlineStatus();
    if (!stream) setReachableStatus(`${ui.reachableStatus.textContent} ${why ? `Camera: ${why}.` : ''}`.trim());
  } catch (err) {
    online = null;
    stream?.getTracks().forEach(track => track.stop());
    setReachableStatus(`Could not go online: ${explainRegisterError(err, name)}`, 'error');
  } finally {
    goingOnline = false;
    renderReachable();
    renderCallees();
  }
}

function goOffline() {
  if (!online) return;
  const { name } = online;
  pb.unregisterCallee(name);
  if (ringing) {
    declineQuietly(ringing, DECLINE_REASON);
    closePrompt();
  }
  // A running call keeps our camera until it ends.
  if (online.stream) toRelease.add(online.stream);
  online = null;
  releaseStreamIfUnused();
  setReachableStatus(IDLE_HINT);
  renderReachable();
  renderCallees();
}

/** Streams given up while a call still used them; stopped when that call ends. */
const toRelease = new Set();
function releaseStreamIfUnused() {
  for (const stream of toRelease) {
    if (isLive(call) && ui.local.srcObject === stream) continue;
    stream.getTracks().forEach(track => track.stop());
    toRelease.delete(stream);
  }
}

/** Goes online from a click or a key: the moment browsers let a page ask and sound. */
function goOnlineNow() {
  askForNotifications();
  ringTone.unlock();
  goOnline();
}
ui.goOnline.addEventListener('click', () => (online ? goOffline() : goOnlineNow()));
ui.reachableName.addEventListener('keydown', event => {
  if (event.key === 'Enter' && !online && !goingOnline) goOnlineNow();
});
ui.dnd.addEventListener('change', () => {
  if (!online) return;
  try {
    pb.setCalleePresence(online.name, ui.dnd.checked ? 'dnd' : 'available');
  } catch (err) {
    setReachableStatus(err.message, 'error');
  }
});

// Leaving the page should hang up at once rather than leave the other end waiting for ICE
// to time out.
addEventListener('pagehide', () => {
  if (ringing) declineQuietly(ringing, 'Not available');
  call?.end();
});
