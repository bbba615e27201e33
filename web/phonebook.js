// peercam's browser client for the phonebook protocol (docs/protocol.md, version 1).
//
// The API follows deepstream's WebRTC API: a Phonebook lists callees and makes calls; a
// Call walks INITIAL → CONNECTING → RINGING → ACCEPTED → ESTABLISHED and ends in ENDED,
// DECLINED or ERROR. The phonebook only relays signalling: media flows peer to peer, so
// an established call survives the WebSocket going away.

const PROTOCOL_VERSION = 1;
const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10_000;
// A socket that never gets to `welcome` is as good as dead; don't wait on it forever.
const WELCOME_TIMEOUT_MS = 10_000;
const TERMINAL = new Set(['ENDED', 'DECLINED', 'ERROR']);

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

/** A connection to a peercam phonebook; reconnects by itself until `close()`. */
export class Phonebook extends Emitter {
  /** Connects to `url` (default: `/ws` on this page's host); `options.agent` names the client in the server's logs. */
  constructor(url = defaultUrl(), options = {}) {
    super();
    this.url = url;
    this.agent = options.agent ?? 'peercam-web/0.1';
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

  /** Ends every call, closes the socket and stops reconnecting. */
  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    for (const call of [...this._calls.values()]) call.end();
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
    ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', version: PROTOCOL_VERSION, agent: this.agent }));
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

  _handle(msg) {
    switch (msg.type) {
      case 'welcome':
        clearTimeout(this._welcomeTimer);
        this.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
        this._attempt = 0;
        this._generation++;
        this._setConnectionState('open');
        // The server forgot our subscription with the old socket.
        if (this._calleeListener) this._send({ type: 'listen' });
        return;
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
      case 'error':
        if (msg.call_id !== undefined) return this._calls.get(msg.call_id)?._handle(msg);
        console.warn(`peercam: phonebook error ${msg.code}: ${msg.message}`);
        this._emit('error', Object.assign(new Error(msg.message), { code: msg.code }));
        return;
      default:
        // ringing, accepted, declined, candidate, hangup. Messages about calls we no
        // longer track (late candidates after a hangup) are expected and dropped.
        if (msg.call_id !== undefined) this._calls.get(msg.call_id)?._handle(msg);
    }
  }

  _publishCallees() {
    this._calleeListener?.([...this._callees.values()]);
  }
}

/** One outgoing call; get it from `Phonebook.makeCall`. */
export class Call extends Emitter {
  constructor(phonebook, callee, metaData, localStream) {
    super();
    this.id = randomCallId();
    this.callee = callee;
    this.metaData = metaData;
    this.state = 'INITIAL';
    this.peerConnection = null;
    /** Every remote track lands in this one stream, whatever msid the callee used. */
    this.remoteStream = null;
    this._phonebook = phonebook;
    this._localStream = localStream;
    this._generation = 0;
    this._callSent = false;
    this._localCandidates = [];
    this._remoteCandidates = [];
  }

  /** Hangs up (or cancels while it rings) and closes the peer connection. */
  end() {
    if (TERMINAL.has(this.state)) return;
    this._sendToPeer({ type: 'hangup', call_id: this.id, reason: 'caller hung up' });
    this._finish('ENDED', 'ended', 'caller hung up');
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

      const pc = new RTCPeerConnection({ iceServers: pb.iceServers });
      this.peerConnection = pc;
      this.remoteStream = new MediaStream();
      pc.onicecandidate = event => this._onLocalCandidate(event.candidate);
      pc.ontrack = event => {
        this.remoteStream.addTrack(event.track);
        this._maybeEstablished();
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === 'failed') this._finish('ENDED', 'ended', 'connection lost');
        else this._maybeEstablished();
      };

      const tracks = this._localStream?.getTracks() ?? [];
      for (const track of tracks) pc.addTrack(track, this._localStream);
      // We always want the camera's picture and sound, even when sending nothing or
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
      this._callSent = true;
      // The server only relays candidates for a call it knows, so those gathered
      // while the offer was made wait until `call` is out.
      for (const candidate of this._localCandidates.splice(0)) this._sendCandidate(candidate);
    } catch (err) {
      this._fail(err);
    }
  }

  _onLocalCandidate(candidate) {
    // Chrome reports the end of a generation as an empty candidate; the protocol's
    // end-of-candidates is the null that follows it.
    if (candidate && !candidate.candidate) return;
    const init = candidate ? candidate.toJSON() : null;
    if (this._callSent) this._sendCandidate(init);
    else this._localCandidates.push(init);
  }

  _sendCandidate(candidate) {
    this._sendToPeer({ type: 'candidate', call_id: this.id, candidate });
  }

  /** Sends only on the connection the call was placed on: a new one does not know it. */
  _sendToPeer(msg) {
    if (this._callSent && this._generation === this._phonebook._generation) this._phonebook._send(msg);
  }

  async _handle(msg) {
    if (TERMINAL.has(this.state)) return;
    try {
      switch (msg.type) {
        case 'ringing':
          if (this.state === 'CONNECTING') this._setState('RINGING');
          return;
        case 'accepted': {
          if (this.state !== 'CONNECTING' && this.state !== 'RINGING') return;
          await this.peerConnection.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
          if (TERMINAL.has(this.state)) return;
          this._setState('ACCEPTED');
          for (const candidate of this._remoteCandidates.splice(0)) await this._addRemoteCandidate(candidate);
          return this._maybeEstablished();
        }
        case 'candidate':
          // The callee may trickle before it accepts; candidates need the answer first.
          if (this.peerConnection?.remoteDescription) return this._addRemoteCandidate(msg.candidate);
          this._remoteCandidates.push(msg.candidate);
          return;
        case 'declined':
          return this._finish('DECLINED', 'declined', msg.reason);
        case 'hangup':
          return this._finish('ENDED', 'ended', msg.reason);
        case 'error':
          return this._finish('ERROR', 'error', Object.assign(new Error(msg.message), { code: msg.code }));
      }
    } catch (err) {
      this._fail(err);
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
    if (this.state !== 'ACCEPTED' || !this.remoteStream.getTracks().length) return;
    // Tracks appear with the answer, before any packet flows: wait for the transport
    // too, so 'established' means media can play.
    const connected = pc.connectionState
      ? pc.connectionState === 'connected'
      : ['connected', 'completed'].includes(pc.iceConnectionState);
    if (!connected) return;
    this._setState('ESTABLISHED');
    this._emit('established', this.remoteStream);
  }

  _fail(err) {
    if (TERMINAL.has(this.state)) return;
    // Tell the callee, or its half of the call would linger until ICE times out.
    this._sendToPeer({ type: 'hangup', call_id: this.id, reason: `caller failed: ${err.message}` });
    this._finish('ERROR', 'error', err);
  }

  _finish(state, event, detail) {
    if (TERMINAL.has(this.state)) return;
    this.peerConnection?.close();
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
