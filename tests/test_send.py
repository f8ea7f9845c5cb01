"""Live output to other programs: the VMC frame conversion, the VMC/OSC sender against a real UDP
receiver, the WebSocket stream, --serve refusing a busy port, and the page in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
from pythonosc.osc_bundle import OscBundle

from mlanet.conventions import camera_pose_to_vmc
from mlanet.edge import live_cli, video_cli
from mlanet.edge.send.face_sample import ARKIT_NAMES, FaceSample, parse_face_choice
from mlanet.edge.send.vmc import DEFAULT_VMC_PORT, VmcSender, parse_vmc_url, vmc_bundle
from mlanet.errors import MLANetError
from mlanet.geometry.quaternions import quaternions_to_matrices




def _rot_x(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample(weights=None, rotation=None, frame=0, t=None):
    R = np.eye(3) if rotation is None else rotation
    tr = np.array([0.02, -0.01, 0.6])
    p, q = camera_pose_to_vmc(R, tr)
    w = np.zeros(52, np.float32) if weights is None else np.asarray(weights, np.float32)
    return FaceSample(time.time() if t is None else t, frame, 0, w, R, tr, p, q)


# ---------------------------------------------------------------------------------------------- the VMC frame
def test_vmc_frame_avatar_does_what_the_performer_does():
    """Identity faces the camera; turning to one's own left turns the avatar (facing +z) to its left (-x);
    looking down tilts its forward to -y; the head sits in front of the camera (z < 0)."""
    p, q = camera_pose_to_vmc(np.eye(3), np.array([0.1, -0.05, 0.6]))
    np.testing.assert_allclose(q, [0, 0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(p, [-0.1, 0.05, -0.6])
    for a in (0.3, 1.2):
        # the face's front (-z in the model frame) turned towards the performer's left (+x in the camera frame)
        R = _rot_y(-a)
        np.testing.assert_allclose(R @ [0, 0, -1], [math.sin(a), 0, -math.cos(a)], atol=1e-12)
        _, q = camera_pose_to_vmc(R, np.zeros(3))
        forward = quaternions_to_matrices(q[None])[0] @ [0, 0, 1]
        np.testing.assert_allclose(forward, [-math.sin(a), 0, math.cos(a)], atol=1e-9)
        # looking down: the front tilts towards +y in the camera (image down)
        R = _rot_x(a)
        np.testing.assert_allclose(R @ [0, 0, -1], [0, math.sin(a), -math.cos(a)], atol=1e-12)
        _, q = camera_pose_to_vmc(R, np.zeros(3))
        forward = quaternions_to_matrices(q[None])[0] @ [0, 0, 1]
        np.testing.assert_allclose(forward, [0, -math.sin(a), math.cos(a)], atol=1e-9)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
    with pytest.raises(ValueError):
        camera_pose_to_vmc(np.eye(3), np.zeros(2))


# ---------------------------------------------------------------------------------------------- URLs, choices
def test_vmc_urls_and_face_choice():
    t = parse_vmc_url("vmc://127.0.0.1")
    assert t.address == ("127.0.0.1", DEFAULT_VMC_PORT) and t.family == socket.AF_INET
    assert parse_vmc_url("vmc://localhost:40000").address[1] == 40000
    assert parse_vmc_url("vmc://[::1]:40001").family == socket.AF_INET6
    for bad, words in (("osc://127.0.0.1:1", "give vmc://"), ("vmc://127.0.0.1:99999", "port"),
                       ("vmc://:39539", "no host"), ("vmc://127.0.0.1:1/path", "HOST[:PORT] only"),
                       ("vmc://no-such-host.invalid:1", "cannot resolve")):
        with pytest.raises(MLANetError, match=re.escape(words)) as err:
            parse_vmc_url(bad)
        assert f"--send {bad}" in str(err.value) and "\n" not in str(err.value)
    assert parse_face_choice("largest") == "largest" and parse_face_choice("2") == 2
    for bad in ("-1", "big"):
        with pytest.raises(ValueError):
            parse_face_choice(bad)


def test_vmc_bundle_layout():
    w = np.linspace(0, 1, 52, dtype=np.float32)
    s = _sample(w, _rot_y(0.4), t=1_800_000_000.25)
    bundle = OscBundle(vmc_bundle(s))
    msgs = [bundle.content(i) for i in range(bundle.num_contents)]
    assert abs(bundle.timestamp - s.capture_unix_s) < 1e-3  # the OSC time tag is the capture time
    assert [m.address for m in msgs[:3]] == ["/VMC/Ext/OK", "/VMC/Ext/T", "/VMC/Ext/Bone/Pos"]
    assert msgs[0].params == [1] and abs(msgs[1].params[0] - s.capture_unix_s) < 1.0  # OSC floats are 32-bit
    head = msgs[2].params
    assert head[0] == "Head" and np.allclose(head[1:4], s.vmc_position) and np.allclose(head[4:], s.vmc_quaternion)
    vals = msgs[3:-1]
    assert [m.address for m in vals] == ["/VMC/Ext/Blend/Val"] * 52
    assert [m.params[0] for m in vals] == list(ARKIT_NAMES)
    np.testing.assert_allclose([m.params[1] for m in vals], w, atol=1e-6)
    assert msgs[-1].address == "/VMC/Ext/Blend/Apply" and msgs[-1].params == []


def test_sending_to_nobody_never_blocks_or_raises():
    port = _free_port(socket.SOCK_DGRAM)  # nobody listens there
    sender = VmcSender([parse_vmc_url(f"vmc://127.0.0.1:{port}")])
    t0 = time.perf_counter()
    for i in range(200):
        sender.publish(_sample(frame=i))
    publish_s = time.perf_counter() - t0
    sender.close()
    assert publish_s < 1.0  # 200 hand-overs, no network work in the caller
    assert sender.sent + sender.replaced == 200


# ---------------------------------------------------------------------------------------------- the CLIs
class _UdpReceiver:
    """A real OSC/UDP receiver: collects every datagram on a port."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            self.datagrams.append((time.time(), data))

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _check_vmc_datagrams(datagrams, t_start, t_end):
    assert datagrams, "no VMC datagram arrived"
    stamps = []
    for arrived, data in datagrams:
        bundle = OscBundle(data)
        msgs = [bundle.content(i) for i in range(bundle.num_contents)]
        assert [m.address for m in msgs][:3] == ["/VMC/Ext/OK", "/VMC/Ext/T", "/VMC/Ext/Bone/Pos"]
        assert [m.params[0] for m in msgs[3:-1]] == list(ARKIT_NAMES) and msgs[-1].address == "/VMC/Ext/Blend/Apply"
        weights = np.array([m.params[1] for m in msgs[3:-1]])
        assert np.all(weights >= 0) and np.all(weights <= 1)
        head = msgs[2].params
        assert head[0] == "Head" and abs(np.linalg.norm(head[4:]) - 1) < 1e-4
        assert -3.0 < head[3] < -0.1  # in front of the camera, metres
        assert t_start - 0.5 <= bundle.timestamp <= arrived + 0.05  # captured before it arrived, during the run
        stamps.append(bundle.timestamp)
    assert stamps == sorted(stamps)
    return np.array(stamps)


@pytest.mark.assets
@pytest.mark.gl
def test_live_sends_vmc_and_streams_to_a_websocket_client(obama_clip_24, ict_model_file, tmp_path):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    receiver = _UdpReceiver()
    port = _free_port()
    stats = tmp_path / "stats.json"
    rc: list[int] = []
    t_start = time.time()
    run = threading.Thread(target=lambda: rc.append(live_cli.main([
        "--video", str(obama_clip_24), "--replay-fps", "6", "--no-window", "--untrained", "mlanet_mobile",
        "--face-model", str(ict_model_file), "--send", f"vmc://127.0.0.1:{receiver.port}", "--serve", str(port),
        "--json-stats", str(stats)])))
    run.start()
    messages = []
    deadline = time.time() + 120
    while time.time() < deadline and run.is_alive():  # the server is up before the first frame is read
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/").read().decode()
    assert "viewer.js" in page
    glb = urllib.request.urlopen(f"http://127.0.0.1:{port}/face.glb").read()
    assert glb[:4] == b"glTF"
    with connect(f"ws://127.0.0.1:{port}/stream", open_timeout=10) as ws:
        try:
            while True:
                messages.append(json.loads(ws.recv(timeout=30)))
        except (ConnectionClosed, TimeoutError):  # the run ended (the server closed) or went quiet
            pass
    run.join(timeout=120)
    receiver.close()
    assert rc == [0]
    assert messages[0] == {"type": "hello", "names": list(ARKIT_NAMES)}
    faces = [m for m in messages[1:] if m["type"] == "face"]
    assert faces and all(len(m["w"]) == 52 and abs(np.linalg.norm(m["q"]) - 1) < 1e-4 for m in faces)
    frames = [m["frame"] for m in messages[1:]]
    assert frames == sorted(frames)
    _check_vmc_datagrams(receiver.datagrams, t_start, time.time())
    st = json.loads(stats.read_text())
    assert st["live_outputs"]["vmc"]["datagrams_sent"] == len(receiver.datagrams)
    assert st["live_outputs"]["viewer"]["messages"] == st["frames"]


@pytest.mark.assets
@pytest.mark.gl
def test_video_send_replays_at_the_files_rate(obama_clip_24, ict_model_file, tmp_path):
    receiver = _UdpReceiver()
    t0 = time.time()
    rc = video_cli.main([str(obama_clip_24), "--out", str(tmp_path / "run"), "--untrained", "mlanet_mobile", "--face-model",
                         str(ict_model_file), "--quiet", "--no-video", "--meshes", "none", "--no-glb",
                         "--send", f"vmc://127.0.0.1:{receiver.port}"])
    elapsed = time.time() - t0
    time.sleep(0.2)
    receiver.close()
    assert rc == 0
    stamps = _check_vmc_datagrams(receiver.datagrams, t0, time.time())
    # 24 frames at 25 fps: time tags 40 ms apart (the frames' presentation times), sent no faster than that
    assert len(stamps) == 24
    np.testing.assert_allclose(np.diff(stamps), 0.04, atol=2e-3)
    arrivals = np.array([a for a, _ in receiver.datagrams])
    assert arrivals[-1] - arrivals[0] >= 23 * 0.04 - 0.02 and elapsed >= 0.9


@pytest.mark.assets
@pytest.mark.gl
def test_serve_refuses_a_port_in_use(obama_clip_24, ict_model_file, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = live_cli.main(["--video", str(obama_clip_24), "--no-window", "--untrained", "mlanet_mobile",
                            "--face-model", str(ict_model_file), "--serve", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and f"--serve {port}" in err and "in use" in err and "Traceback" not in err
    rc = live_cli.main(["--video", str(obama_clip_24), "--no-window", "--untrained", "mlanet_mobile",
                        "--face-model", str(ict_model_file), "--send", "udp://x"])
    assert rc == 2 and "--send udp://x" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the page
def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _HeadlessPage:
    """Headless Chromium driven over the DevTools protocol: open a URL, evaluate, take screenshots."""

    def __init__(self, exe, url, tmp_path, size=(400, 400)):
        from websockets.sync.client import connect

        profile = tmp_path / "chromium-profile"
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (active.is_file() and len(active.read_text().splitlines()) >= 2):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("headless Chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = active.read_text().splitlines()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
        page = next(t for t in targets if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
        self._id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=False)
        self.call("Page.navigate", url=url)

    def call(self, method, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.1)
        raise AssertionError(f"page never satisfied {expression!r}; title {self.evaluate('document.title')!r}")

    def screenshot(self):
        from PIL import Image

        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)

    def close(self):
        if getattr(self, "_stack", None) is not None:
            self._stack.close()
        self.proc.kill()
        self.proc.wait()


@pytest.mark.assets
@pytest.mark.skipif(_chromium() is None, reason="no Chromium (CI installs Debian's chromium package)")
def test_the_page_shows_the_head_and_follows_the_stream(ict_model_file, tmp_path):
    from mlanet.edge.send.viewer import ViewerServer
    from mlanet.morphable.model import MorphableModel

    server = ViewerServer(MorphableModel.load(ict_model_file), port=0)
    page = None
    try:
        page = _HeadlessPage(_chromium(), server.url, tmp_path)
        page.wait_for("document.body.dataset.meshVertices !== undefined")
        page.wait_for("document.getElementById('hud').textContent.includes('connected')")
        server.publish(0, time.time(), _sample())
        page.wait_for("document.title === 'MLANet live: frame 0'")
        time.sleep(0.3)  # a few animation frames
        neutral = page.screenshot()
        h, w, _ = neutral.shape
        background = np.array([32, 34, 40])
        face = np.abs(neutral - background).sum(-1) > 40
        face[: h // 6] = False  # the HUD's lines
        rows, cols = np.nonzero(face)
        assert face.mean() > 0.05, f"the head covers {face.mean():.1%} of the page"
        assert abs(rows.mean() / h - 0.5) < 0.1 and abs(cols.mean() / w - 0.5) < 0.1  # in the middle
        assert not face[-h // 8:].any() and not face[:, : w // 8].any() and not face[:, -w // 8:].any()
        jaw = np.zeros(52, np.float32)
        jaw[ARKIT_NAMES.index("jawOpen")] = 1.0
        server.publish(1, time.time(), _sample(jaw, _rot_y(-0.5), frame=1))
        page.wait_for("document.title === 'MLANet live: frame 1'")
        time.sleep(0.3)
        moved = page.screenshot()
        changed = np.abs(moved - neutral).sum(-1)[h // 6:, :] > 40  # below the HUD
        assert changed.mean() > 0.02, "the streamed pose and jawOpen did not change the picture"
        assert int(page.evaluate("Number(document.body.dataset.received)")) == 2
    finally:
        if page is not None:
            page.close()
        server.close()


def test_send_face_picks_the_largest_or_the_track(synthetic_model):
    from types import SimpleNamespace

    from mlanet.edge.send.face_sample import FaceSampler

    faces = [SimpleNamespace(track_id=t, box=SimpleNamespace(size=s)) for t, s in ((0, 80.0), (1, 200.0), (2, 120.0))]
    assert FaceSampler(synthetic_model).pick(faces).track_id == 1
    assert FaceSampler(synthetic_model, 2).pick(faces).track_id == 2
    assert FaceSampler(synthetic_model, 5).pick(faces) is None  # that track is not in this frame: nothing is sent
    assert FaceSampler(synthetic_model).pick([]) is None


def test_a_file_replay_starts_at_its_first_frame():
    """The replay clock starts when the first frame is sent (however long loading took), then keeps the
    presentation times: frames 40 ms apart are due, and stamped, 40 ms apart."""
    from mlanet.edge.send.face_sample import CaptureClock

    clock = CaptureClock(file_replay=True)
    time.sleep(0.2)  # model loading, warm-up...
    t0 = time.time()
    clock.wait_until_due(400_000_000)  # a resumed file: its first frame at 0.4 s
    first = clock.unix_s(400_000_000)
    assert abs(first - t0) < 0.05
    start = time.perf_counter()
    clock.wait_until_due(480_000_000)
    assert 0.07 <= time.perf_counter() - start < 0.2
    assert abs(clock.unix_s(480_000_000) - first - 0.08) < 1e-6
