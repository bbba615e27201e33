// peercam's browser client for the phonebook protocol (docs/protocol.md, version 1).
//
// The API follows deepstream's WebRTC API: a Phonebook lists callees, makes calls and
// registers this page as a callee; a Call walks INITIAL → CONNECTING → RINGING → ACCEPTED →
// ESTABLISHED (an incoming call starts at RINGING) and ends in ENDED, DECLINED or ERROR.
// The phonebook only relays signalling: media and the `peercam` data channel flow peer to
// peer, so an established call survives the WebSocket going away.
//
// Early media: a callee may answer the offer while it still rings (`call.preview()`; the
// answer goes out in `ringing`), so the caller's picture plays before anyone picks up, while
// nothing leaves this page until `accept()`. A camera's bell calls the household this way
// (`call.isBell`), and such calls are previewed by themselves.

const PROTOCOL_VERSION = 1;
const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10_000;
// A socket that never gets to `welcome` is as good as dead; don't wait on it forever.
const WELCOME_TIMEOUT_MS = 10_000;
// After a reconnect the server may not have noticed yet that our old socket is gone, and
// still hold our names: a re-registration refused as taken is tried again a few times.
const REREGISTER_RETRIES = 5;
const REREGISTER_DELAY_MS = 2_000;
const TERMINAL = new Set(['ENDED', 'DECLINED', 'ERROR']);
/** The label of the data channel every call carries (created by the caller). */
export const DATA_CHANNEL_LABEL = 'peercam';

/** A minimal event emitter: `on(event, fn)`, `off(event, fn)`. */
class Emitter {
  #handlers = new Map();

  /** Calls `fn` every time `event` is emitted; returns `this` for chaining. */
  on(event, fn) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(fn);
    return this;
  }

  /** Stops calling `fn` for `event`. */
  off(event, fn) {
    this.#handlers.get(event)?.delete(fn);
    return this;
  }

  _emit(event, ...args) {
    for (const fn of [...(this.#handlers.get(event) ?? [])]) {
      // One faulty handler must not break the protocol handling that emitted the event.
      try { fn(...args); } catch (err) { console.error(`peercam: '${event}' handler failed`, err); }
    }
  }
}

function randomCallId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return 'c-' + Array.from(bytes, b => b.toString(16).padStart(2, '0')).join('');
}

function defaultUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function protocolError(message, code) {
  return Object.assign(new Error(message), { code });
}

/** A connection to a peercam phonebook; reconnects by itself until `close()`. */
export class Phonebook extends Emitter {
  /**
   * Connects to `url` (default: `/ws` on this page's host); `options.agent` names the client
   * in the server's logs, `options.token` is the user token or passphrase the phonebook asks for.
   * `options.previewBells` (default true): a camera's bell call is previewed as soon as it
   * arrives (see `Call.preview`); false leaves it to the incoming-call callback.
   */
  constructor(url = defaultUrl(), options = {}) {
    super();
    this.url = url;
    this.agent = options.agent ?? 'peercam-web/0.1';
    this.token = options.token || null;
    this.previewBells = options.previewBells !== false;
    /** Who may call on this phonebook, from its welcome: 'open', 'passphrase' or 'users'. */
    this.auth = null;
    /** 'connecting' | 'open' | 'closed'; 'open' means the server answered `welcome`. */
    this.connectionState = 'connecting';
    this.iceServers = [];
    this._ws = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._welcomeTimer = null;
    this._stopped = false;
    // Bumped on every welcome: a call placed on an earlier connection is unknown to the
    // server now, so messages about it would only earn `unknown_call` errors.
    this._generation = 0;
    this._calls = new Map();
    this._calleeListener = null;
    this._callees = new Map();
    this._openWaiters = new Set();
    // The names this page wants to be reachable under: name → {meta, callback, presence,
    // confirmed, retries, waiters}. They are registered again on every new connection.
    this._registrations = new Map();
    // Names whose `register` went out on this socket and awaits `registered` or an error.
    // The server answers in order, and name errors carry no name, hence a queue.
    this._pendingRegisters = [];
    // Deferred so that handlers attached right after construction see 'connecting'.
    queueMicrotask(() => {
      this._emit('connection', this.connectionState);
      this._connect();
    });
  }

  /** Calls `listener(callees)` with the whole array of `{name, meta, presence}` when it arrives and on every change. */
  listenForCallees(listener) {
    this._calleeListener = listener;
    this._send({ type: 'listen' });
  }

  /** Stops the callee list updates. */
  unlistenForCallees() {
    this._calleeListener = null;
    this._callees.clear();
    this._send({ type: 'unlisten' });
  }

  /** Calls `callee` with `metaData` (shown to the callee); sends `localStream`'s tracks if given. Returns a Call. */
  makeCall(callee, metaData = {}, localStream = null) {
    const call = new Call(this, callee, metaData, localStream);
    this._calls.set(call.id, call);
    // Deferred so that handlers attached right after makeCall see every state change.
    queueMicrotask(() => call._start());
    return call;
  }

  /**
   * Makes this page reachable as `name`, shown to everyone with `meta` (a plain object).
   * Every incoming call for it is handed to `callback(call, metaData)` already RINGING;
   * answer with `call.accept(localStream)` or `call.decline(reason)`; `call.preview()` (done
   * already for a camera's bell, `call.isBell`) shows the caller's media first. Resolves with the
   * name once the phonebook confirms; rejects with an Error whose `code` is `name_taken`
   * or `invalid_name`. The name is registered again whenever the phonebook reconnects;
   * if that fails for good, a `registrationLost` event carries `(name, error)`. Calling it
   * again for a name already held updates its meta and callback.
   */
  registerCallee(name, meta, callback) {
    if (typeof name !== 'string') throw new TypeError('the callee name must be a string');
    if (meta === undefined || meta === null) meta = {};
    if (!isPlainObject(meta)) throw new TypeError('the callee meta must be a plain object');
    if (typeof callback !== 'function') throw new TypeError('registerCallee needs a callback for incoming calls');
    if (this._stopped) return Promise.reject(protocolError('the phonebook is closed', 'closed'));
    return new Promise((resolve, reject) => {
      const reg = this._registrations.get(name)
        ?? { name, presence: 'available', confirmed: false, retries: 0, waiters: [] };
      reg.meta = meta;
      reg.callback = callback;
      reg.waiters.push({ resolve, reject });
      this._registrations.set(name, reg);
      // When not connected, `welcome` registers every name.
      this._sendRegister(reg);
    });
  }

  /** Stops being reachable as `name`. Calls already ringing or running under it go on. */
  unregisterCallee(name) {
    const reg = this._registrations.get(name);
    if (!reg) return;
    this._registrations.delete(name);
    for (const { reject } of reg.waiters.splice(0)) {
      reject(protocolError(`stopped registering "${name}"`, 'unregistered'));
    }
    this._send({ type: 'unregister', name });
  }

  /**
   * Sets a registered name's presence to `dnd` (do not disturb) or back to `available`.
   * Calls still ring through: it is for the callback to decline them. Kept across
   * reconnects.
   */
  setCalleePresence(name, presence) {
    if (presence !== 'available' && presence !== 'dnd') {
      throw new RangeError(`a callee can only set its presence to available or dnd, not ${presence}`);
    }
    const reg = this._registrations.get(name);
    if (!reg) throw new Error(`"${name}" is not registered by this page`);
    reg.presence = presence;
    // An unconfirmed name gets its presence sent once `registered` arrives.
    if (reg.confirmed) this._send({ type: 'set_presence', name, presence });
  }

  /** Uses `token` (a user token or the passphrase) from the next connection on, reconnecting now. */
  setToken(token) {
    this.token = token || null;
    clearTimeout(this._retryTimer);
    this._attempt = 0;
    if (this._ws) this._ws.close();
    else this._connect();
  }

  /** Ends every call, closes the socket and stops reconnecting. */
  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    for (const call of [...this._calls.values()]) call.end();
    for (const reg of this._registrations.values()) {
      for (const { reject } of reg.waiters.splice(0)) reject(protocolError('the phonebook is closed', 'closed'));
    }
    this._registrations.clear();
    this._ws?.close();
    this._dropSocket();
  }

  _connect() {
    if (this._stopped) return;
    this._setConnectionState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.error('peercam: cannot open the phonebook socket', err);
      this._dropSocket();
      return;
    }
    this._ws = ws;
    this._welcomeTimer = setTimeout(() => ws.close(), WELCOME_TIMEOUT_MS);
    ws.onopen = () => {
      const hello = { type: 'hello', version: PROTOCOL_VERSION, agent: this.agent };
      if (this.token) hello.token = this.token;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = event => {
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      if (msg && typeof msg.type === 'string') this._handle(msg);
    };
    // `error` is always followed by `close`, which does the work; a stale socket's close
    // (one replaced after a timeout) must not tear down its successor.
    ws.onclose = () => { if (this._ws === ws) this._dropSocket(); };
  }

  _dropSocket() {
    clearTimeout(this._welcomeTimer);
    this._ws = null;
    this._pendingRegisters = [];
    for (const reg of this._registrations.values()) reg.confirmed = false;
    // Media is peer to peer, so established calls go on; the rest cannot progress
    // without the phonebook relaying the answer.
    for (const call of [...this._calls.values()]) {
      if (call.state !== 'ESTABLISHED') call._finish('ENDED', 'ended', 'phonebook connection lost');
    }
    this._setConnectionState('closed');
    if (this._stopped) return;
    // Capped exponential backoff with jitter, so a restarted server is not hit by every
    // page at the same instant.
    const delay = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** this._attempt++);
    this._retryTimer = setTimeout(() => this._connect(), delay * (0.5 + Math.random() / 2));
  }

  _setConnectionState(state) {
    if (this.connectionState === state) return;
    this.connectionState = state;
    this._emit('connection', state);
    if (state === 'open') {
      for (const resolve of this._openWaiters) resolve();
      this._openWaiters.clear();
    }
  }

  _whenOpen() {
    if (this.connectionState === 'open') return Promise.resolve();
    return new Promise(resolve => this._openWaiters.add(resolve));
  }

  /** Sends `msg` if the session is up; returns whether it went out. */
  _send(msg) {
    if (this.connectionState !== 'open' || this._ws?.readyState !== WebSocket.OPEN) return false;
    this._ws.send(JSON.stringify(msg));
    return true;
  }

  _sendRegister(reg) {
    if (this._send({ type: 'register', name: reg.name, meta: reg.meta })) this._pendingRegisters.push(reg.name);
  }

  _handle(msg) {
    switch (msg.type) {
      case 'welcome':
        clearTimeout(this._welcomeTimer);
        this.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
        this.auth = typeof msg.auth === 'string' ? msg.auth : 'open';
        this._emit('auth', this.auth);
        this._attempt = 0;
        this._generation++;
        this._setConnectionState('open');
        // The server forgot our subscription and our names with the old socket.
        if (this._calleeListener) this._send({ type: 'listen' });
        for (const reg of this._registrations.values()) this._sendRegister(reg);
        return;
      case 'registered':
        return this._onRegistered(msg.name);
      case 'callees':
        this._callees = new Map((msg.callees ?? []).map(c => [c.name, c]));
        return this._publishCallees();
      case 'callee_update':
        if (msg.callee?.name === undefined) return;
        this._callees.set(msg.callee.name, msg.callee);
        return this._publishCallees();
      case 'callee_removed':
        this._callees.delete(msg.name);
        return this._publishCallees();
      case 'incoming_call':
        return this._onIncomingCall(msg);
      case 'error':
        if (msg.call_id !== undefined) return this._calls.get(msg.call_id)?._handle(msg);
        if (['name_taken', 'invalid_name', 'unauthorized', 'forbidden'].includes(msg.code) && this._pendingRegisters.length) {
          return this._onRegisterRefused(this._pendingRegisters.shift(), protocolError(msg.message, msg.code));
        }
        console.warn(`peercam: phonebook error ${msg.code}: ${msg.message}`);
        this._emit('error', protocolError(msg.message, msg.code));
        return;
      default:
        // ringing, accepted, declined, candidate, hangup. Messages about calls we no
        // longer track (late candidates after a hangup) are expected and dropped.
        if (msg.call_id !== undefined) this._calls.get(msg.call_id)?._handle(msg);
    }
  }

  _onRegistered(name) {
    const index = this._pendingRegisters.indexOf(name);
    if (index >= 0) this._pendingRegisters.splice(index, 1);
    const reg = this._registrations.get(name);
    if (!reg) return; // given up meanwhile; its `unregister` is on the way
    reg.confirmed = true;
    reg.retries = 0;
    if (reg.presence !== 'available') this._send({ type: 'set_presence', name, presence: reg.presence });
    for (const { resolve } of reg.waiters.splice(0)) resolve(name);
    this._emit('registered', name);
  }

  _onRegisterRefused(name, err) {
    err.callee = name;
    const reg = this._registrations.get(name);
    if (!reg) return;
    if (reg.waiters.length) {
      // Somebody asked for this name just now: they get the refusal.
      this._registrations.delete(name);
      for (const { reject } of reg.waiters.splice(0)) reject(err);
      return;
    }
    // A name we held before a reconnect.
    if (err.code === 'name_taken' && reg.retries < REREGISTER_RETRIES) {
      reg.retries++;
      const generation = this._generation;
      setTimeout(() => {
        if (this._registrations.get(name) === reg && this._generation === generation && !reg.confirmed) this._sendRegister(reg);
      }, REREGISTER_DELAY_MS);
      return;
    }
    this._registrations.delete(name);
    console.warn(`peercam: lost the name "${name}": ${err.message}`);
    this._emit('registrationLost', name, err);
  }

  _onIncomingCall(msg) {
    const reg = this._registrations.get(msg.callee);
    if (typeof msg.call_id !== 'string' || this._calls.has(msg.call_id)) return;
    if (!reg) {
      // A call for a name we gave up a moment ago: say so rather than let it ring out.
      this._send({ type: 'decline', call_id: msg.call_id, reason: 'not available' });
      return;
    }
    const meta = isPlainObject(msg.meta) ? msg.meta : {};
    const call = new Call(this, msg.callee, meta, null, { id: msg.call_id, sdp: msg.sdp });
    this._calls.set(call.id, call);
    call._ring();
    // Started before the callback so that its `preview` handlers are in time, and so that
    // the door's picture is there whatever the page does.
    if (call.isBell && this.previewBells) call.preview().catch(() => {});
    try {
      reg.callback(call, meta);
    } catch (err) {
      console.error('peercam: the incoming call handler failed', err);
    }
  }

  _publishCallees() {
    this._calleeListener?.([...this._callees.values()]);
  }
}

/**
 * One call, outgoing (from `Phonebook.makeCall`) or incoming (handed to a
 * `registerCallee` callback, `isIncoming === true`).
 *
 * Events: `stateChange(state)`, `established(remoteStream)`, `declined(reason)`,
 * `ended(reason)`, `error(err)`, `dataopen()` once the `peercam` data channel opens and
 * `data(text)` for each message received on it, and `preview(remoteStream)` when the other
 * end's media comes before the call is accepted (an incoming call after `preview()`, an
 * outgoing one whose callee answered early). A bell call rung off at the device ends with
 * its reason: `answered by ada` (someone else answered first) or `missed`.
 */
export class Call extends Emitter {
  constructor(phonebook, callee, metaData, localStream, incoming = null) {
    super();
    this.isIncoming = incoming !== null;
    this.id = incoming?.id ?? randomCallId();
    /** The name called (for an incoming call: which of this page's names). */
    this.callee = callee;
    /** Outgoing: the meta sent to the callee. Incoming: the caller's meta (e.g. `callerName`). */
    this.metaData = metaData;
    this.state = 'INITIAL';
    this.peerConnection = null;
    /** Every remote track lands in this one stream, whatever msid the other end used. */
    this.remoteStream = null;
    /** The `peercam` data channel (null until created or received). */
    this.dataChannel = null;
    /** Whether `send()` can be used now. */
    this.dataChannelOpen = false;
    /** Once over: why (the ENDED or DECLINED reason, or the error's message). */
    this.endReason = null;
    this._phonebook = phonebook;
    this._localStream = localStream;
    this._offer = incoming?.sdp ?? null;
    // Whether the server knows this call, so messages about it may go out; an incoming
    // call is known from the start, on the connection it arrived on.
    this._announced = this.isIncoming;
    this._generation = this.isIncoming ? phonebook._generation : 0;
    this._answering = false;
    this._localCandidates = [];
    // Remote candidates wait for the remote description, then are added in order.
    this._remoteCandidates = [];
    this._remoteReady = false;
    this._draining = false;
    // Incoming: the early answer being made (a Promise of the remote stream), once asked for.
    this._preview = null;
    // Outgoing: applying the callee's answer, which may come twice (`ringing`, `accepted`).
    this._answerApplied = null;
  }

  /**
   * Whether this is a camera's bell ringing this page: an incoming call whose caller says
   * `kind: "bell"` and whose `device` name the phonebook vouches for.
   */
  get isBell() {
    return this.isIncoming && this.metaData.kind === 'bell' && this.device !== null;
  }

  /**
   * For an incoming call: the name the calling connection holds in the phonebook (a camera
   * ringing its household; the phonebook sets it, the caller cannot), else null.
   */
  get device() {
    const device = this.isIncoming ? this.metaData.device : undefined;
    return typeof device === 'string' && device ? device : null;
  }

  /**
   * Answers an incoming RINGING call's offer at once, without accepting it: the answer goes
   * to the caller in `ringing`, and the caller's media plays here while it rings (resolves
   * with the remote stream; the `preview` event carries it too). Every media section this
   * page may send on is answered send-and-receive but given no track, so nothing leaves
   * this page until `accept(localStream)` puts its tracks on (no renegotiation: a track
   * goes only where the offer had room for one). Asking again returns the same Promise.
   * Bell calls are previewed by themselves (unless the Phonebook's `previewBells` is false).
   */
  preview() {
    if (!this.isIncoming) throw new Error('only an incoming call can be previewed');
    if (this._preview) return this._preview;
    if (this._answering || this.state !== 'RINGING') {
      throw new Error(`cannot preview a call that is ${this._answering ? 'being accepted' : this.state}`);
    }
    this._preview = this._answerEarly();
    return this._preview;
  }

  /** Whether `preview()` was asked for: the call's media may play while it rings. */
  get previewing() {
    return this._preview !== null;
  }

  /**
   * Answers an incoming RINGING call, sending `localStream`'s tracks where the caller's
   * offer has room for them (a previewed call: where its early answer has). Throws at once
   * if the call cannot be accepted (not incoming, declined, ended, already accepted).
   * Returns a Promise that settles once the answer is out; a failure after that point ends
   * the call in ERROR with an `error` event (a call the caller gave up on meanwhile: code
   * `unknown_call`, or ENDED with the caller's reason).
   */
  accept(localStream = null) {
    if (!this.isIncoming) throw new Error('only an incoming call can be accepted');
    if (this._answering || this.state !== 'RINGING') {
      throw new Error(`cannot accept a call that is ${this._answering ? 'already being accepted' : this.state}`);
    }
    this._answering = true;
    this._localStream = localStream;
    return this._answer();
  }

  /** Declines an incoming RINGING call; the caller sees `reason`. Throws if it cannot. */
  decline(reason = 'Declined') {
    if (!this.isIncoming) throw new Error('only an incoming call can be declined; use end()');
    if (this._answering || this.state !== 'RINGING') {
      throw new Error(`cannot decline a call that is ${this._answering ? 'being accepted' : this.state}`);
    }
    reason = String(reason);
    this._sendToPeer({ type: 'decline', call_id: this.id, reason });
    this._finish('DECLINED', 'declined', reason);
  }

  /** Hangs up (or cancels while it rings) and closes the peer connection. */
  end() {
    if (TERMINAL.has(this.state)) return;
    const reason = this.isIncoming ? 'callee hung up' : 'caller hung up';
    this._sendToPeer({ type: 'hangup', call_id: this.id, reason });
    this._finish('ENDED', 'ended', reason);
  }

  /**
   * Asks the camera to open its door (`{"request":"open_door"}` on the data channel); only
   * whoever answered its bell may, and the answer comes back as a `door` event in `data`.
   * Throws like `send()` when the channel is not open.
   */
  openDoor() {
    this.send(JSON.stringify({ request: 'open_door' }));
  }

  /** Sends a text message on the call's `peercam` data channel; throws if it is not open. */
  send(data) {
    if (typeof data !== 'string') throw new TypeError('call.send() sends a string');
    const channel = this.dataChannel;
    // Chromium updates readyState a moment after the connection is closed: an ended
    // call refuses at once.
    if (TERMINAL.has(this.state)) {
      throw new Error(`the call's data channel is not open (the call has ${this.state.toLowerCase()})`);
    }
    if (!channel || channel.readyState !== 'open') {
      throw new Error(`the call's data channel is not open (${channel ? channel.readyState : 'not created yet'}); wait for the 'dataopen' event`);
    }
    channel.send(data);
  }

  _createPeerConnection() {
    const pc = new RTCPeerConnection({ iceServers: this._phonebook.iceServers });
    this.peerConnection = pc;
    this.remoteStream = new MediaStream();
    pc.onicecandidate = event => this._onLocalCandidate(event.candidate);
    pc.ontrack = event => {
      if (!this.remoteStream.getTrackById(event.track.id)) this.remoteStream.addTrack(event.track);
      this._maybeEstablished();
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed') this._finish('ENDED', 'ended', 'connection lost');
      else this._maybeEstablished();
    };
    pc.ondatachannel = event => {
      if (event.channel.label === DATA_CHANNEL_LABEL && !this.dataChannel) this._attachDataChannel(event.channel);
    };
    return pc;
  }

  _attachDataChannel(channel) {
    this.dataChannel = channel;
    channel.binaryType = 'arraybuffer';
    const opened = () => {
      if (this.dataChannelOpen || TERMINAL.has(this.state)) return;
      this.dataChannelOpen = true;
      this._emit('dataopen');
    };
    channel.onopen = opened;
    channel.onclose = () => { this.dataChannelOpen = false; };
    channel.onmessage = event => {
      const text = typeof event.data === 'string' ? event.data : new TextDecoder().decode(event.data);
      this._emit('data', text);
    };
    // A channel handed over by `datachannel` may already be open.
    if (channel.readyState === 'open') queueMicrotask(opened);
  }

  async _start() {
    const pb = this._phonebook;
    this._setState('CONNECTING');
    try {
      if (pb.connectionState === 'closed') {
        // A call waiting out a reconnect backoff would look hung; fail it the way a
        // connection drop during the call would.
        return this._finish('ENDED', 'ended', 'phonebook connection lost');
      }
      await pb._whenOpen();
      if (TERMINAL.has(this.state)) return;

      const pc = this._createPeerConnection();
      // Created before the offer so the offer negotiates it: one reliable, ordered channel.
      this._attachDataChannel(pc.createDataChannel(DATA_CHANNEL_LABEL));
      const tracks = this._localStream?.getTracks() ?? [];
      for (const track of tracks) pc.addTrack(track, this._localStream);
      // We always want the other end's picture and sound, even when sending nothing or
      // only a microphone; the callee rejects what it cannot send.
      for (const kind of ['video', 'audio']) {
        if (!tracks.some(t => t.kind === kind)) pc.addTransceiver(kind, { direction: 'recvonly' });
      }

      await pc.setLocalDescription(await pc.createOffer());
      if (TERMINAL.has(this.state)) return;
      this._generation = pb._generation;
      const sent = pb._send({
        type: 'call', call_id: this.id, callee: this.callee, meta: this.metaData, sdp: pc.localDescription.sdp,
      });
      if (!sent) return this._finish('ENDED', 'ended', 'phonebook connection lost');
      this._announced = true;
      // The server only relays candidates for a call it knows, so those gathered
      // while the offer was made wait until `call` is out.
      for (const candidate of this._localCandidates.splice(0)) this._sendCandidate(candidate);
    } catch (err) {
      this._fail(err);
    }
  }

  /** An incoming call starts ringing: the caller is told at once, with the answer if previewed. */
  _ring() {
    this._setState('RINGING');
    // After the incoming-call callback: a preview it asks for sends the one `ringing`,
    // carrying the early answer.
    queueMicrotask(() => {
      if (!this._preview && this.state === 'RINGING') this._sendToPeer({ type: 'ringing', call_id: this.id });
    });
  }

  /** Makes the peer connection and applies the caller's offer; null if the call ended meanwhile. */
  async _applyOffer() {
    const pc = this._createPeerConnection();
    await pc.setRemoteDescription({ type: 'offer', sdp: this._offer });
    if (TERMINAL.has(this.state)) return null;
    this._remoteReady = true;
    this._drainRemoteCandidates();
    return pc;
  }

  async _answerEarly() {
    try {
      const pc = await this._applyOffer();
      if (!pc) throw new Error(`the call is ${this.state.toLowerCase()}`);
      // Send-and-receive without a track sends nothing; it leaves room for accept()'s
      // tracks. A section the caller only sends on is answered receive-only whatever we say.
      for (const transceiver of pc.getTransceivers()) {
        if (transceiver.stopped || transceiver.currentDirection === 'stopped') continue;
        transceiver.direction = 'sendrecv';
      }
      await pc.setLocalDescription(await pc.createAnswer());
      if (TERMINAL.has(this.state)) throw new Error(`the call is ${this.state.toLowerCase()}`);
      if (!this._sendToPeer({ type: 'ringing', call_id: this.id, sdp: pc.localDescription.sdp })) {
        this._finish('ENDED', 'ended', 'phonebook connection lost');
        throw new Error('phonebook connection lost');
      }
      this._emit('preview', this.remoteStream);
      return this.remoteStream;
    } catch (err) {
      this._fail(err);
      throw err;
    }
  }

  /**
   * Puts the local stream's tracks on the transceivers that may send, one per transceiver
   * of its kind. Before the answer is made, a transceiver is turned to send for its track;
   * once made (a previewed call), only those it negotiated as sending take one.
   */
  async _attachLocalTracks(pc, negotiated) {
    const unused = [...(this._localStream?.getTracks() ?? [])];
    for (const transceiver of pc.getTransceivers()) {
      if (transceiver.stopped || transceiver.currentDirection === 'stopped') continue;
      if (negotiated && !['sendrecv', 'sendonly'].includes(transceiver.currentDirection)) continue;
      const index = unused.findIndex(t => t.kind === transceiver.receiver.track.kind);
      if (index < 0) continue;
      const [track] = unused.splice(index, 1);
      if (!negotiated) transceiver.direction = 'sendrecv';
      await transceiver.sender.replaceTrack(track);
      // New stream ids would need another offer and answer; the other end takes the
      // track under the id the early answer gave.
      if (!negotiated) transceiver.sender.setStreams?.(this._localStream);
    }
    if (unused.length) console.info(`peercam: the caller's offer has no room for our ${unused.map(t => t.kind).join(', ')}`);
  }

  async _answer() {
    try {
      let pc;
      if (this._preview) {
        // A preview that failed has ended the call already.
        try { await this._preview; } catch { return; }
        if (TERMINAL.has(this.state)) return;
        pc = this.peerConnection;
        await this._attachLocalTracks(pc, true);
      } else {
        pc = await this._applyOffer();
        if (!pc) return;
        // Send on the m-lines the offer made (the transceivers it created), one local
        // track per m-line of its kind; m-lines we have nothing for stay receive-only.
        await this._attachLocalTracks(pc, false);
        await pc.setLocalDescription(await pc.createAnswer());
      }
      if (TERMINAL.has(this.state)) return;
      // A previewed call's accept carries the early answer again: the caller applies one.
      if (!this._sendToPeer({ type: 'accept', call_id: this.id, sdp: pc.localDescription.sdp })) {
        return this._finish('ENDED', 'ended', 'phonebook connection lost');
      }
      this._setState('ACCEPTED');
      this._maybeEstablished();
    } catch (err) {
      this._fail(err);
    } finally {
      this._answering = false;
    }
  }

  _onLocalCandidate(candidate) {
    // Chrome reports the end of a generation as an empty candidate; the protocol's
    // end-of-candidates is the null that follows it.
    if (candidate && !candidate.candidate) return;
    const init = candidate ? candidate.toJSON() : null;
    if (this._announced) this._sendCandidate(init);
    else this._localCandidates.push(init);
  }

  _sendCandidate(candidate) {
    this._sendToPeer({ type: 'candidate', call_id: this.id, candidate });
  }

  /** Sends only on the connection the call was placed on: a new one does not know it. Returns whether it went out. */
  _sendToPeer(msg) {
    if (!this._announced || this._generation !== this._phonebook._generation) return false;
    return this._phonebook._send(msg);
  }

  async _handle(msg) {
    if (TERMINAL.has(this.state)) return;
    try {
      switch (msg.type) {
        case 'ringing':
          if (this.isIncoming) return;
          if (this.state === 'CONNECTING') this._setState('RINGING');
          // Early media: the callee answered while it rings.
          if (typeof msg.sdp === 'string' && this.state === 'RINGING' && !this._answerApplied) {
            await this._applyAnswer(msg.sdp);
            if (this.state === 'RINGING') this._emit('preview', this.remoteStream);
          }
          return;
        case 'accepted': {
          if (this.isIncoming || (this.state !== 'CONNECTING' && this.state !== 'RINGING')) return;
          await this._applyAnswer(msg.sdp);
          if (TERMINAL.has(this.state)) return;
          this._setState('ACCEPTED');
          return this._maybeEstablished();
        }
        case 'candidate':
          // Either end may trickle before the other's description is set here (an
          // incoming call's candidates can come before accept()): keep them until then.
          this._remoteCandidates.push(msg.candidate ?? null);
          if (this._remoteReady) this._drainRemoteCandidates();
          return;
        case 'declined':
          if (!this.isIncoming) this._finish('DECLINED', 'declined', msg.reason);
          return;
        case 'hangup':
          return this._finish('ENDED', 'ended', msg.reason);
        case 'error':
          return this._finish('ERROR', 'error', protocolError(msg.message, msg.code));
      }
    } catch (err) {
      this._fail(err);
    }
  }

  /**
   * Applies the callee's answer once: an early one from `ringing`, and `accepted` repeats
   * it (applying it again would fail, the connection being stable by then).
   */
  _applyAnswer(sdp) {
    this._answerApplied ??= this.peerConnection.setRemoteDescription({ type: 'answer', sdp }).then(() => {
      this._remoteReady = true;
      this._drainRemoteCandidates();
    });
    return this._answerApplied;
  }

  /** Adds the waiting remote candidates one at a time, in the order they came. */
  async _drainRemoteCandidates() {
    if (this._draining) return;
    this._draining = true;
    try {
      while (this._remoteCandidates.length && !TERMINAL.has(this.state)) {
        await this._addRemoteCandidate(this._remoteCandidates.shift());
      }
    } finally {
      this._draining = false;
    }
  }

  async _addRemoteCandidate(candidate) {
    try {
      // No argument is the standard way to say "no more candidates".
      await (candidate ? this.peerConnection.addIceCandidate(candidate) : this.peerConnection.addIceCandidate());
    } catch (err) {
      // One unusable candidate (say, an address family we lack) must not end the call.
      console.warn('peercam: ignored a remote ICE candidate', candidate, err);
    }
  }

  _maybeEstablished() {
    const pc = this.peerConnection;
    if (this.state !== 'ACCEPTED' || !pc) return;
    // Tracks appear with the descriptions, before any packet flows: wait for the
    // transport too, so 'established' means media can play.
    const connected = pc.connectionState
      ? pc.connectionState === 'connected'
      : ['connected', 'completed'].includes(pc.iceConnectionState);
    if (!connected) return;
    // And for the other end's media, if it sends any (a caller without a camera doesn't).
    const receiving = pc.getTransceivers().some(t => t.currentDirection === 'sendrecv' || t.currentDirection === 'recvonly');
    if (receiving && !this.remoteStream.getTracks().length) return;
    this._setState('ESTABLISHED');
    this._emit('established', this.remoteStream);
  }

  _fail(err) {
    if (TERMINAL.has(this.state)) return;
    // Tell the other end, or its half of the call would linger until ICE times out.
    const who = this.isIncoming ? 'callee' : 'caller';
    this._sendToPeer({ type: 'hangup', call_id: this.id, reason: `${who} failed: ${err.message}` });
    this._finish('ERROR', 'error', err);
  }

  _finish(state, event, detail) {
    if (TERMINAL.has(this.state)) return;
    this.peerConnection?.close();
    this.dataChannelOpen = false;
    this.endReason = detail instanceof Error ? detail.message : String(detail ?? '');
    this._phonebook._calls.delete(this.id);
    this._setState(state);
    this._emit(event, detail);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit('stateChange', state);
  }
}
