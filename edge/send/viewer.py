"""``--serve [PORT]``: a local web page that shows the fitted head live in 3D.

One port serves everything (HTTP and WebSocket, through the ``websockets`` library, BSD-3-Clause):

- ``/`` (``viewer.html``) and ``/viewer.js``: the page, written for this project in plain WebGL2
  (no JavaScript library, nothing from a CDN: it works offline);
- ``/face.glb``: the face model's mesh with its ARKit-named morph targets (the same GLB writer as
  ``mlanet-video``'s ``tracks/*.glb``; mean identity);
- ``/stream``: a WebSocket that first sends ``{"type": "hello", "names": [...52 ARKit names]}``,
  then one JSON message per processed frame: ``{"type": "face", "frame", "track", "t"`` (capture
  time, Unix seconds), ``"w"`` (52 weights), ``"q"`` (head rotation, ``xyzw``, glTF frame),
  ``"p"`` (position, metres, glTF frame)``}``, or ``{"type": "none", "frame", "t"}`` when the
  chosen face is not in the frame.

The server binds 127.0.0.1 unless told otherwise (``--serve-host``). Publishing never blocks the
pipeline: the newest message replaces one not yet sent, and a broadcast thread sends it to
every connected page (a slow page delays only itself).
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from mlanet.errors import MLANetError
from mlanet.geometry.quaternions import matrices_to_quaternions
from mlanet.edge.frames import LatestFrameBuffer
from mlanet.edge.writers.gltf import D_GLTF, track_glb_bytes
from mlanet.edge.writers.tables import ArkitMapping, arkit_morph_mesh
from mlanet.edge.send import DEFAULT_VIEWER_PORT
from mlanet.edge.send.face_sample import ARKIT_NAMES, FaceSample

if TYPE_CHECKING:
    from mlanet.morphable.model import MorphableModel

log = logging.getLogger(__name__)
#: the websockets library's own log (one line per start, stop and failed handshake): warnings only
_ws_log = logging.getLogger("mlanet.edge.send.viewer.ws")
_ws_log.setLevel(logging.WARNING)

STREAM_PATH = "/stream"
_STATIC = {"/": ("viewer.html", "text/html; charset=utf-8"),
           "/viewer.html": ("viewer.html", "text/html; charset=utf-8"),
           "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8")}


def face_glb(face_model: MorphableModel) -> bytes:
    """The viewer's mesh: the face model's mean face with ARKit morph targets, as GLB bytes."""
    mesh = arkit_morph_mesh(face_model, ArkitMapping.from_model(face_model))
    return track_glb_bytes("face.glb", **mesh, times_s=np.zeros(0), weights=np.zeros((0, len(mesh["morph_names"]))),
                           rotations=np.zeros((0, 3, 3)), translations=np.zeros((0, 3)),
                           extras={"source": "mlanet-live --serve"})


def stream_message(frame_index: int, capture_unix_s: float, sample: FaceSample | None) -> str:
    """The JSON text sent on ``/stream`` for one frame (module docstring)."""
    if sample is None:
        return json.dumps({"type": "none", "frame": int(frame_index), "t": round(capture_unix_s, 4)})
    q = matrices_to_quaternions((D_GLTF @ sample.rotation @ D_GLTF)[None])[0]
    return json.dumps({
        "type": "face", "frame": sample.frame_index, "track": sample.track_id, "t": round(sample.capture_unix_s, 4),
        "w": [round(float(x), 4) for x in sample.weights],
        "q": [round(float(x), 6) for x in q],
        "p": [round(float(x), 5) for x in D_GLTF @ sample.translation],
    })


class ViewerServer:
    """The page, the GLB and the stream on ``host:port`` (module docstring).

    Raises:
        MLANetError: the port is in use or cannot be bound (names ``--serve``, the host and port).
    """

    def __init__(self, face_model: MorphableModel, port: int = DEFAULT_VIEWER_PORT, host: str = "127.0.0.1") -> None:
        self.host = host
        self._files: dict[str, tuple[bytes, str]] = {
            path: (resources.files(__package__).joinpath("static", name).read_bytes(), ctype)
            for path, (name, ctype) in _STATIC.items()
        }
        self._files["/face.glb"] = (face_glb(face_model), "model/gltf-binary")
        self._hello = json.dumps({"type": "hello", "names": list(ARKIT_NAMES)})
        self._clients: set[ServerConnection] = set()
        self._lock = threading.Lock()
        self._slot = LatestFrameBuffer()
        self.published = 0
        try:
            self._server = serve(self._handle, host, port, process_request=self._http, compression=None,
                                 logger=_ws_log)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MLANetError(f"--serve {port}: port {port} on {host} is in use by another program; "
                                  "choose another port (--serve PORT)") from None
            raise MLANetError(f"--serve {port}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        self.port = int(self._server.socket.getsockname()[1])
        self._serve_thread = threading.Thread(target=self._server.serve_forever, name="mlanet-viewer-http", daemon=True)
        self._serve_thread.start()
        self._send_thread = threading.Thread(target=self._broadcast, name="mlanet-viewer-send", daemon=True)
        self._send_thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # ------------------------------------------------------------------ HTTP + WebSocket
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == STREAM_PATH:
            return None  # go on with the WebSocket handshake
        if path not in self._files:
            return connection.respond(404, f"{path}: not found (the viewer is at /)\n")
        body, ctype = self._files[path]
        headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
        return Response(200, "OK", headers, body)

    def _handle(self, ws: ServerConnection) -> None:
        try:
            ws.send(self._hello)
            with self._lock:
                self._clients.add(ws)
            for _ in ws:  # the page sends nothing; this waits until it goes away
                pass
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._clients.discard(ws)

    # ------------------------------------------------------------------ publishing
    def publish(self, frame_index: int, capture_unix_s: float, sample: FaceSample | None) -> None:
        """Queue one frame's message for every page (replacing one not yet sent); returns at once (the
        broadcast thread encodes it)."""
        self._slot.put((frame_index, capture_unix_s, sample))  # type: ignore[arg-type]
        self.published += 1

    def _broadcast(self) -> None:
        while True:
            item = self._slot.get()
            if item is None:
                return
            with self._lock:
                clients = list(self._clients)
            if not clients:
                continue
            text = stream_message(*item)  # type: ignore[misc]
            for ws in clients:
                try:
                    ws.send(text)
                except ConnectionClosed:
                    pass

    def close(self) -> None:
        """Stop serving and close every page's connection (idempotent)."""
        self._slot.close(discard=True)
        self._server.shutdown()
        self._send_thread.join(timeout=2.0)
        self._serve_thread.join(timeout=2.0)
