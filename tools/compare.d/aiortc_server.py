#!/usr/bin/env python3
"""aiortc serving one camera, the way DIY doorbells do it: one shared source track,
fanned out with aiortc's MediaRelay, encoded by aiortc's own H.264 encoder (libx264
through PyAV) once per viewer.

A WHEP-like endpoint for benches/compare.rs: `POST /whep` with an SDP offer answers
`201` with the SDP answer (aiortc gathers before answering, so candidates are in it)
and a `Location`; `DELETE` on the location closes that peer connection. `GET /health`
says it is up.

The source is GStreamer (the same test pattern and clock as peercam's dev board) as raw
I420 frames into aiortc; it runs while anyone watches. With `--encoder matched` (the
default) aiortc's encoder gets the bench's settings (x264 preset, bitrate, keyframe
interval); `--encoder stock` leaves aiortc's defaults (libx264's default preset,
1 Mbit/s adapting 0.5-3 Mbit/s, libavcodec's default GOP).

Usage: aiortc_server.py --port PORT --source "videotestsrc ... ! clockoverlay ..."
  [--encoder matched|stock] [--bitrate-kbps 2000] [--keyframe-interval 60]
  [--preset ultrafast]
"""

import argparse
import asyncio
import fractions
import sys
import uuid

import aioice.ice
import av
import gi
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import h264
from aiortc.contrib.media import MediaRelay

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

VIDEO_CLOCK = 90000


def loopback_only():
    """The bench runs on loopback only; aioice leaves 127.0.0.1 out of its candidates."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def match_encoder(args):
    """Gives aiortc's H264Encoder the bench's x264 settings.

    aiortc has no setting for them: its encoder creates the libx264 context itself and
    assigns `options` (level, tune) on it. We hand it a context whose `options`
    assignment keeps ours too, and pin the bitrate it would otherwise adapt.
    """
    extra = {
        "preset": args.preset,
        "tune": "zerolatency",
        # x264enc's default rate control is CBR with a 600 ms VBV buffer.
        "x264-params": (
            f"keyint={args.keyframe_interval}:vbv-maxrate={args.bitrate_kbps}:"
            f"vbv-bufsize={args.bitrate_kbps * 6 // 10}"
        ),
    }

    class Matched:
        def __init__(self, context):
            object.__setattr__(self, "_context", context)
            context.gop_size = args.keyframe_interval

        def __getattr__(self, name):
            return getattr(self._context, name)

        def __setattr__(self, name, value):
            if name == "options":
                value = {**value, **extra}
            setattr(self._context, name, value)

    class MatchedCodecContext:
        @staticmethod
        def create(*create_args, **kwargs):
            return Matched(av.CodecContext.create(*create_args, **kwargs))

    class AvWithMatchedX264:
        CodecContext = MatchedCodecContext

        def __getattr__(self, name):
            return getattr(av, name)

    h264.av = AvWithMatchedX264()
    bitrate = args.bitrate_kbps * 1000
    h264.DEFAULT_BITRATE = h264.MIN_BITRATE = h264.MAX_BITRATE = bitrate


class GstCamera:
    """The source pipeline into the asyncio loop, started with the first viewer."""

    def __init__(self, source, loop):
        self.description = (
            f"{source} ! videoconvert ! video/x-raw,format=I420 ! "
            "appsink name=frames emit-signals=true max-buffers=2 drop=true sync=false"
        )
        self.loop = loop
        self.pipe = None
        self.latest = asyncio.Queue(maxsize=1)

    def start(self):
        if self.pipe is not None:
            return
        self.pipe = Gst.parse_launch(self.description)
        self.pipe.get_by_name("frames").connect("new-sample", self.on_sample)
        self.pipe.set_state(Gst.State.PLAYING)

    def stop(self):
        if self.pipe is not None:
            self.pipe.set_state(Gst.State.NULL)
            self.pipe = None

    def on_sample(self, sink):
        sample = sink.emit("pull-sample")
        caps = sample.get_caps().get_structure(0)
        width, height = caps.get_value("width"), caps.get_value("height")
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if ok:
            data = bytes(info.data)
            buffer.unmap(info)
            self.loop.call_soon_threadsafe(self.offer, data, width, height)
        return Gst.FlowReturn.OK

    def offer(self, data, width, height):
        # A slow consumer gets the newest picture, as a camera would give it.
        if self.latest.full():
            self.latest.get_nowait()
        self.latest.put_nowait((data, width, height))


class CameraTrack(MediaStreamTrack):
    """The camera's pictures as av.VideoFrames, timed from the first one."""

    kind = "video"

    def __init__(self, camera):
        super().__init__()
        self.camera = camera
        self.start = None

    async def recv(self):
        data, width, height = await self.camera.latest.get()
        frame = av.VideoFrame(width, height, "yuv420p")
        offset = 0
        for plane in frame.planes:
            size = plane.buffer_size
            plane.update(data[offset : offset + size])
            offset += size
        now = asyncio.get_running_loop().time()
        if self.start is None:
            self.start = now
        frame.pts = int((now - self.start) * VIDEO_CLOCK)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


class Server:
    def __init__(self, camera):
        self.camera = camera
        self.relay = MediaRelay()
        self.track = CameraTrack(camera)
        self.peers = {}

    async def offer(self, request):
        sdp = await request.text()
        pc = RTCPeerConnection()
        session = uuid.uuid4().hex
        self.peers[session] = pc
        self.camera.start()
        pc.addTrack(self.relay.subscribe(self.track, buffered=False))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await self.close(session)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"/whep/{session}"},
        )

    async def delete(self, request):
        if request.match_info["session"] not in self.peers:
            return web.Response(status=404)
        await self.close(request.match_info["session"])
        return web.Response(status=200)

    async def close(self, session):
        pc = self.peers.pop(session, None)
        if pc is not None:
            await pc.close()
        if not self.peers:
            self.camera.stop()

    async def health(self, _request):
        return web.Response(text="ok")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--encoder", choices=["matched", "stock"], default="matched")
    parser.add_argument("--bitrate-kbps", type=int, default=2000)
    parser.add_argument("--keyframe-interval", type=int, default=60)
    parser.add_argument("--preset", default="ultrafast")
    args = parser.parse_args()
    Gst.init(None)
    loopback_only()
    if args.encoder == "matched":
        match_encoder(args)

    async def serve():
        server = Server(GstCamera(args.source, asyncio.get_running_loop()))
        app = web.Application()
        app.router.add_post("/whep", server.offer)
        app.router.add_delete("/whep/{session}", server.delete)
        app.router.add_get("/health", server.health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        print(f"aiortc server on http://127.0.0.1:{args.port}/whep", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
