#!/usr/bin/env python3
"""One GStreamer webrtcbin per viewer, each with its own encoder: the design of
webrtcsink and of the camera daemons that encode per viewer.

A WHEP-like endpoint for benches/compare.rs: `POST /whep` with an SDP offer builds
`<pipeline> ! rtph264pay ! webrtcbin` for that viewer and answers `201` with the SDP
answer (candidates included, no trickle) and a `Location`; `DELETE` on the location
stops that viewer's pipeline. `GET /health` says it is up.

Usage: webrtcbin_server.py --port PORT --pipeline "videotestsrc ... ! h264parse" [--stamp]
(the bench passes peercam's own source and encoder description, so both encode alike).
With --stamp, every I420 picture leaving the element named `stamp` gets its capture time
drawn in, in the layout of peercam's src/media/stamp.rs, for the latency run.
"""

import argparse
import ctypes
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstVideo, GstWebRTC, Nice  # noqa: E402

# The payload type our viewers offer for constrained baseline H.264.
PAYLOAD = 102
ANSWER_TIMEOUT = 10.0


_GOBJECT = ctypes.CDLL("libgobject-2.0.so.0")
_GOBJECT.g_object_ref.argtypes = [ctypes.c_void_p]
_GOBJECT.g_object_ref.restype = ctypes.c_void_p
ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p


_GST = ctypes.CDLL("libgstreamer-1.0.so.0")


class _MapInfo(ctypes.Structure):
    """GstMapInfo."""

    _fields_ = [
        ("memory", ctypes.c_void_p),
        ("flags", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("size", ctypes.c_size_t),
        ("maxsize", ctypes.c_size_t),
        ("user_data", ctypes.c_void_p * 4),
        ("_gst_reserved", ctypes.c_void_p * 4),
    ]


_GST.gst_buffer_peek_memory.argtypes = [ctypes.c_void_p, ctypes.c_uint]
_GST.gst_buffer_peek_memory.restype = ctypes.c_void_p
_GST.gst_memory_map.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
_GST.gst_memory_map.restype = ctypes.c_int
_GST.gst_memory_unmap.argtypes = [ctypes.c_void_p, ctypes.c_void_p]


def _pointer(wrapper):
    """The C pointer behind a PyGObject wrapper: a GObject's capsule, or for a boxed type
    (GstBuffer) the field that follows the Python object header in PyGBoxed."""
    if hasattr(wrapper, "__gpointer__"):
        return ctypes.pythonapi.PyCapsule_GetPointer(wrapper.__gpointer__, None)
    return ctypes.c_void_p.from_address(id(wrapper) + object.__basicsize__).value


def loopback_only(rtc):
    """Keeps webrtcbin's ICE on 127.0.0.1, as every system in the bench is.

    libnice leaves loopback out of its candidates unless addresses are given. webrtcbin
    (1.22) keeps its ICE object floating, so the Python wrapper of `ice-agent` would sink
    it and free it when dropped: the extra reference is the one webrtcbin gives back
    when it finalizes.
    """
    ice = rtc.get_property("ice-agent")
    _GOBJECT.g_object_ref(_pointer(ice))
    loopback = Nice.Address.new()
    loopback.set_from_string("127.0.0.1")
    ice.get_property("agent").add_local_address(loopback)


# src/media/stamp.rs: 40 blocks across the top, `1`, `0`, 36 bits of the wall-clock time
# in ms (most significant first), their even parity, `1`; black 16, white 235.
BLOCKS = 40
TIME_BITS = 36
BLACK, WHITE = 16, 235


def stamp_bits(time_ms):
    value = time_ms & ((1 << TIME_BITS) - 1)
    bits = [1, 0]
    bits += [(value >> (TIME_BITS - 1 - i)) & 1 for i in range(TIME_BITS)]
    bits += [bin(value).count("1") % 2, 1]
    return bits


def draw_stamp(pad, info):
    """Pad probe: draws the capture time into an I420 picture, as peercam's does."""
    caps = pad.get_current_caps()
    video = GstVideo.VideoInfo.new_from_caps(caps) if caps else None
    if video is None or video.finfo.format != GstVideo.VideoFormat.I420:
        return Gst.PadProbeReturn.OK
    width, height = video.width, video.height
    size = max(width // BLOCKS, 2)
    rows = min(size, height)
    row = b"".join(bytes([WHITE if bit else BLACK]) * size for bit in stamp_bits(time.time_ns() // 1_000_000))
    row = row[: min(len(row), width)]
    buffer = info.get_buffer()
    # The Python wrapper holds a reference, so the buffer does not map for writing; the
    # picture's memory itself (the source's own, unshared) does.
    memory = _GST.gst_buffer_peek_memory(_pointer(buffer), 0)
    mapped = _MapInfo()
    if not memory or not _GST.gst_memory_map(memory, ctypes.byref(mapped), 3):
        return Gst.PadProbeReturn.OK
    try:
        base = mapped.data
        stride = video.stride[0]
        for r in range(rows):
            ctypes.memmove(base + video.offset[0] + r * stride, row, len(row))
        span = min(BLOCKS * size, width) // 2
        grey = b"\x80" * span
        for plane in (1, 2):
            for r in range(rows // 2):
                ctypes.memmove(base + video.offset[plane] + r * video.stride[plane], grey, span)
    finally:
        _GST.gst_memory_unmap(memory, ctypes.byref(mapped))
    return Gst.PadProbeReturn.OK


class Viewer:
    """One viewer's pipeline: its own source, encoder, payloader and webrtcbin."""

    def __init__(self, pipeline, offer_sdp, stamp):
        self.offer_sdp = offer_sdp
        self.answer = None
        self.error = None
        self.done = threading.Event()
        self.pipe = Gst.parse_launch(
            f"{pipeline} ! rtph264pay pt={PAYLOAD} config-interval=-1 "
            f"aggregate-mode=zero-latency ! application/x-rtp,media=video,"
            f"encoding-name=H264,payload={PAYLOAD},clock-rate=90000 ! "
            "webrtcbin name=rtc bundle-policy=max-bundle"
        )
        self.rtc = self.pipe.get_by_name("rtc")
        stamp_element = self.pipe.get_by_name("stamp")
        if stamp and stamp_element is not None:
            stamp_element.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, draw_stamp)
        loopback_only(self.rtc)
        self.rtc.connect("notify::ice-gathering-state", self.on_gathering)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)

    def start(self):
        """Runs on the GLib main loop: play, then answer the offer."""
        self.pipe.set_state(Gst.State.PLAYING)
        ok, message = GstSdp.SDPMessage.new_from_text(self.offer_sdp)
        if ok != GstSdp.SDPResult.OK:
            self.fail("the offer does not parse")
            return False
        offer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, message)
        self.rtc.emit(
            "set-remote-description",
            offer,
            Gst.Promise.new_with_change_func(self.on_remote_set),
        )
        return False

    def on_remote_set(self, promise):
        promise.wait()
        self.rtc.emit("create-answer", None, Gst.Promise.new_with_change_func(self.on_answer))

    def on_answer(self, promise):
        promise.wait()
        reply = promise.get_reply()
        answer = reply.get_value("answer") if reply else None
        if answer is None:
            self.fail(f"no answer: {reply.to_string() if reply else 'empty reply'}")
            return
        self.rtc.emit("set-local-description", answer, Gst.Promise.new())
        self.on_gathering(self.rtc, None)

    def on_gathering(self, rtc, _param):
        # WHEP has no way to trickle the server's candidates: answer once all are in.
        if self.done.is_set():
            return
        if rtc.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return
        local = rtc.get_property("local-description")
        if local is None:
            return
        self.answer = local.sdp.as_text()
        self.done.set()

    def on_error(self, _bus, message):
        err, debug = message.parse_error()
        self.fail(f"{err.message} ({debug})")

    def fail(self, why):
        print(f"webrtcbin server: {why}", file=sys.stderr, flush=True)
        self.error = why
        self.done.set()

    def stop(self):
        self.pipe.set_state(Gst.State.NULL)
        return False


class Server:
    """The viewers by session id, shared between the HTTP threads."""

    def __init__(self, pipeline, stamp):
        self.pipeline = pipeline
        self.stamp = stamp
        self.viewers = {}
        self.lock = threading.Lock()


def handler_for(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args):
            pass

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self.reply(200, b"ok")
            else:
                self.reply(404)

        def do_POST(self):
            if self.path != "/whep":
                self.reply(404)
                return
            length = int(self.headers.get("Content-Length", "0"))
            offer = self.rfile.read(length).decode()
            viewer = Viewer(server.pipeline, offer, server.stamp)
            GLib.idle_add(viewer.start)
            if not viewer.done.wait(ANSWER_TIMEOUT) or viewer.error:
                GLib.idle_add(viewer.stop)
                self.reply(500, (viewer.error or "no answer in time").encode())
                return
            session = uuid.uuid4().hex
            with server.lock:
                server.viewers[session] = viewer
            self.reply(
                201,
                viewer.answer.encode(),
                [("Content-Type", "application/sdp"), ("Location", f"/whep/{session}")],
            )

        def do_DELETE(self):
            session = self.path.rsplit("/", 1)[-1]
            with server.lock:
                viewer = server.viewers.pop(session, None)
            if viewer is None:
                self.reply(404)
                return
            GLib.idle_add(viewer.stop)
            self.reply(200)

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--stamp", action="store_true")
    args = parser.parse_args()
    Gst.init(None)
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(Server(args.pipeline, args.stamp)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(f"webrtcbin server on http://127.0.0.1:{args.port}/whep", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
