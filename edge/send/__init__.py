"""Live output to other programs: ``--send vmc://HOST:PORT`` (VMC protocol, OSC over UDP) and
``--serve [PORT]`` (a browser viewer), for ``mlanet-live`` and ``mlanet-video``.

- :mod:`.face_sample` — the chosen face of a frame as ARKit weights + head pose + capture time;
- :mod:`.vmc` — the VMC/OSC sender;
- :mod:`.viewer` — the local web page and its WebSocket stream.

This module itself stays light (argument parsing only), so the command-line tools start fast;
the sinks import their libraries when they are built.

:class:`LiveSenders` is what the command-line tools use: built from their arguments
(:func:`add_send_arguments`), fed every frame result, closed at the end. Nothing here blocks or
slows the pipeline; ``mlanet-video`` with ``--send`` replays the file at its own frame rate.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlanet.morphable.model import MorphableModel
    from mlanet.edge.send.viewer import ViewerServer
    from mlanet.edge.send.vmc import VmcSender
    from mlanet.edge.types import FrameResult

log = logging.getLogger(__name__)

#: ``--send-face`` default: the face with the largest crop.
LARGEST = "largest"
#: The VMC protocol's usual receiver port (VSeeFace, VNyan, Warudo default to it).
DEFAULT_VMC_PORT = 39539
#: ``--serve`` without a port.
DEFAULT_VIEWER_PORT = 8765


def parse_face_choice(text: str) -> str | int:
    """``--send-face``: ``largest`` or a track id (a non-negative integer). Raises ValueError."""
    if text == LARGEST:
        return LARGEST
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r}: give 'largest' or a track id (0, 1, ...)") from None
    if value < 0:
        raise ValueError(f"{text!r}: a track id is 0 or more")
    return value


def _face_choice(text: str) -> str | int:
    try:
        return parse_face_choice(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is a number from 1 to 65535") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is a number from 1 to 65535")
    return value


def add_send_arguments(parser: argparse.ArgumentParser, *, serve: bool) -> None:
    """``--send``, ``--send-face`` and, with ``serve``, ``--serve`` / ``--serve-host``."""
    g = parser.add_argument_group("live output to other programs")
    g.add_argument("--send", action="append", default=[], metavar="vmc://HOST[:PORT]",
                   help="stream ARKit blendshapes and head pose with the VMC protocol (OSC/UDP) to a receiver "
                   f"(VSeeFace, VNyan, Warudo, Blender/Unity add-ons; port default {DEFAULT_VMC_PORT}); repeatable")
    g.add_argument("--send-face", type=_face_choice, default=LARGEST, metavar="largest|TRACK",
                   help="with several faces: which one is sent (default: the largest)")
    if serve:
        g.add_argument("--serve", nargs="?", type=_port, const=DEFAULT_VIEWER_PORT, default=None, metavar="PORT",
                       help=f"serve a web page with the fitted head live in 3D (default port {DEFAULT_VIEWER_PORT}; "
                       "open http://127.0.0.1:PORT/)")
        g.add_argument("--serve-host", default="127.0.0.1", metavar="HOST",
                       help="address the page is served on (default 127.0.0.1, this machine only; 0.0.0.0 "
                       "shows it to the network)")


class LiveSenders:
    """The sinks the arguments ask for. ``publish(result)`` once per processed frame; ``close()``.

    Args:
        args: parsed arguments of :func:`add_send_arguments`.
        face_model: the ``MorphableModel`` of the parameters.
        file_replay: the source is a file processed faster than real time (``mlanet-video``):
            frames are paced to their presentation times and stamped from the replay's start.

    Raises:
        MLANetError: a bad ``--send`` URL or a ``--serve`` port in use (one line, naming it).
    """

    def __init__(self, args: argparse.Namespace, face_model: MorphableModel, *, file_replay: bool = False) -> None:
        from mlanet.edge.send.face_sample import CaptureClock, FaceSampler  # torch and the face-model code: not at import time

        self.clock = CaptureClock(file_replay=file_replay)
        self.sampler = FaceSampler(face_model, args.send_face, self.clock)
        self.vmc: VmcSender | None = None
        self.viewer: ViewerServer | None = None
        urls = list(args.send or [])
        if urls:
            from mlanet.edge.send.vmc import VmcSender, parse_vmc_url

            self.vmc = VmcSender([parse_vmc_url(u) for u in urls])
        if getattr(args, "serve", None) is not None:  # only parsers built with add_send_arguments(serve=True) have it
            from mlanet.edge.send.viewer import ViewerServer

            try:
                self.viewer = ViewerServer(face_model, port=args.serve, host=args.serve_host)
            except BaseException:
                self.close()
                raise
            log.warning("the live 3D view is at %s", self.viewer.url)

    @property
    def active(self) -> bool:
        return self.vmc is not None or self.viewer is not None

    def publish(self, result: FrameResult) -> None:
        """Hand one ``FrameResult`` to every sink (paced to real time for a file replay)."""
        if not self.active:
            return
        self.clock.wait_until_due(result.frame.t_capture_ns)
        sample = self.sampler.sample(result)
        if self.vmc is not None and sample is not None:
            self.vmc.publish(sample)
        if self.viewer is not None:
            self.viewer.publish(result.frame.index, self.clock.unix_s(result.frame.t_capture_ns), sample)

    def summary(self) -> dict[str, Any]:
        """Counts for run records: VMC datagrams sent / errors, viewer messages published."""
        out: dict[str, Any] = {}
        if self.vmc is not None:
            out["vmc"] = {"targets": [t.url for t in self.vmc.targets], "datagrams_sent": self.vmc.sent,
                          "send_errors": self.vmc.errors, "replaced_before_sending": self.vmc.replaced}
        if self.viewer is not None:
            out["viewer"] = {"url": self.viewer.url, "messages": self.viewer.published}
        return out

    def close(self) -> None:
        if self.vmc is not None:
            self.vmc.close()
        if self.viewer is not None:
            self.viewer.close()


__all__ = ["LiveSenders", "add_send_arguments"]
