"""``--send vmc://HOST:PORT``: stream blendshapes and head pose with the VMC protocol (OSC over UDP).

The VMC protocol (https://protocol.vmc.info) is what VSeeFace, VNyan, Warudo, XR Animator and the
Blender/Unity VMC add-ons read. Per processed frame one OSC bundle goes to every target, its time
tag the frame's capture time, holding in this order:

- ``/VMC/Ext/OK 1`` (a model is loaded) and ``/VMC/Ext/T <capture time, s>``;
- ``/VMC/Ext/Bone/Pos "Head" px py pz qx qy qz qw``: the head's position (metres) and rotation
  (unit quaternion) in the protocol's Unity-style frame (:func:`mlanet.conventions.camera_pose_to_vmc`);
- ``/VMC/Ext/Blend/Val <name> <value>`` for each of the 52 ARKit names (Apple's camelCase
  names, as "perfect sync" avatars name their clips), then ``/VMC/Ext/Blend/Apply``.

Frames without the chosen face send nothing (a receiver keeps the last pose). Sending never
blocks the pipeline: :meth:`VmcSender.publish` hands the newest sample to a sender thread
(an older one not yet sent is replaced), the socket is non-blocking, and a receiver that is not
running is fine (UDP: the datagrams are lost; errors are counted, logged once, never raised).

OSC encoding: python-osc (public domain, "The Unlicense"; https://github.com/attwad/python-osc).
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from mlanet.errors import MLANetError
from mlanet.edge.frames import LatestFrameBuffer
from mlanet.edge.send import DEFAULT_VMC_PORT
from mlanet.edge.send.face_sample import ARKIT_NAMES, FaceSample

log = logging.getLogger(__name__)

SCHEME = "vmc"


@dataclass(frozen=True)
class VmcTarget:
    """A resolved ``vmc://HOST:PORT``: ``url`` as given, ``address`` for ``sendto``, ``family``."""

    url: str
    address: tuple
    family: int


def parse_vmc_url(url: str) -> VmcTarget:
    """Parse and resolve ``vmc://HOST[:PORT]`` (IPv6 hosts in brackets; port default 39539).

    Raises:
        MLANetError: naming ``--send URL`` and what is wrong (scheme, host, port, resolution).
    """
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise MLANetError(f"--send {url}: give vmc://HOST[:PORT] (the VMC protocol over UDP; port default "
                          f"{DEFAULT_VMC_PORT})")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MLANetError(f"--send {url}: a vmc:// target is HOST[:PORT] only")
    try:
        port = parts.port
    except ValueError:
        raise MLANetError(f"--send {url}: the port must be a number from 1 to 65535") from None
    host = parts.hostname
    if not host:
        raise MLANetError(f"--send {url}: no host (e.g. vmc://127.0.0.1:{DEFAULT_VMC_PORT})")
    port = DEFAULT_VMC_PORT if port is None else port
    if not 1 <= port <= 65535:
        raise MLANetError(f"--send {url}: the port must be a number from 1 to 65535")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as exc:
        raise MLANetError(f"--send {url}: cannot resolve {host} ({exc.strerror})") from None
    return VmcTarget(url=url, address=address, family=family)


def vmc_bundle(sample: FaceSample) -> bytes:
    """The OSC bundle (bytes) for one sample, as the module docstring lists it."""
    # python-osc annotates the timestamp as int, but takes (and its docstring asks for) float seconds
    bundle = OscBundleBuilder(sample.capture_unix_s)  # type: ignore[arg-type]

    def message(address: str, *args: str | int | float) -> None:
        m = OscMessageBuilder(address)
        for a in args:
            m.add_arg(a)
        bundle.add_content(m.build())

    message("/VMC/Ext/OK", 1)
    message("/VMC/Ext/T", float(sample.capture_unix_s))
    p, q = sample.vmc_position, sample.vmc_quaternion
    message("/VMC/Ext/Bone/Pos", "Head", *(float(x) for x in p), *(float(x) for x in q))
    for name, value in zip(ARKIT_NAMES, sample.weights):
        message("/VMC/Ext/Blend/Val", name, float(value))
    message("/VMC/Ext/Blend/Apply")
    return bundle.build().dgram


class VmcSender:
    """Sends each published sample to every target from a background thread (never blocks)."""

    def __init__(self, targets: list[VmcTarget]) -> None:
        if not targets:
            raise ValueError("VmcSender needs at least one target")
        self.targets = list(targets)
        self._sockets: dict[int, socket.socket] = {}
        for t in self.targets:
            if t.family not in self._sockets:
                s = socket.socket(t.family, socket.SOCK_DGRAM)
                s.setblocking(False)
                self._sockets[t.family] = s
        self._slot = LatestFrameBuffer()
        self.sent = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="mlanet-vmc-sender", daemon=True)
        self._thread.start()

    def publish(self, sample: FaceSample) -> None:
        """Queue ``sample`` for sending (replacing one not yet sent); returns at once."""
        self._slot.put(sample)  # type: ignore[arg-type]  # the one-slot buffer holds any item

    @property
    def replaced(self) -> int:
        """Samples replaced by a newer one before the sender thread got to them."""
        return self._slot.dropped

    def _run(self) -> None:
        while True:
            sample = self._slot.get()
            if sample is None:
                return
            data = vmc_bundle(sample)  # type: ignore[arg-type]
            for t in self.targets:
                try:
                    self._sockets[t.family].sendto(data, t.address)
                    self.sent += 1
                except OSError as exc:  # no route, buffer full, ...: lose this datagram, keep going
                    self.errors += 1
                    if self.errors == 1:
                        log.warning("--send %s: %s (further send errors are counted, not shown)", t.url, exc)

    def close(self) -> None:
        """Send what is queued, stop the thread and close the sockets (idempotent)."""
        self._slot.close()
        self._thread.join(timeout=2.0)
        for s in self._sockets.values():
            s.close()
        self._sockets.clear()
