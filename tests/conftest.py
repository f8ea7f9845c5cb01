"""Shared fixtures and the skip rules for the markers ``gpu``, ``trt``, ``gl``, ``assets``, ``slow``.

The shared data folder is ``$MLANET_SHARED`` if set, else ``<repo>/../shared``. Tests that
need it carry ``@pytest.mark.assets`` and are skipped with a reason when it is absent.
``MLANET_HOME`` is pointed at a temporary folder for the whole session, so no test reads or
writes the user's real asset home.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    env = os.environ.get("MLANET_SHARED")
    return Path(env) if env else (REPO / ".." / "shared").resolve()


ICT_ARCHIVE = "assets/ict-facekit/FaceXModel.tar.xz"
MEDIAPIPE_OBJ = "assets/mediapipe-canonical/canonical_face_model.obj"


@lru_cache(maxsize=None)
def _gl_unavailable_reason() -> str | None:
    if importlib.util.find_spec("moderngl") is None:
        return "moderngl is not installed (pip install -e '.[gl]')"
    import moderngl

    try:
        ctx = moderngl.create_standalone_context(backend="egl")
    except Exception as exc:  # noqa: BLE001 - any failure means "no GL here"
        return f"no EGL OpenGL context ({type(exc).__name__}: {exc}); install libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri"
    ctx.release()
    return None


@lru_cache(maxsize=None)
def _gpu_unavailable_reason() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU visible to PyTorch"


def _trt_unavailable_reason() -> str | None:
    return None if importlib.util.find_spec("tensorrt") is not None else "TensorRT is not installed"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    checks = {
        "assets": lambda: None if (shared_dir() / ICT_ARCHIVE).is_file() else f"shared data not found at {shared_dir()} (set MLANET_SHARED)",
        "gl": _gl_unavailable_reason,
        "gpu": _gpu_unavailable_reason,
        "trt": _trt_unavailable_reason,
    }
    for item in items:
        for marker, check in checks.items():
            if marker in item.keywords:
                reason = check()
                if reason:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True, scope="session")
def _isolated_asset_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("mlanet_home")
    old = os.environ.get("MLANET_HOME")
    os.environ["MLANET_HOME"] = str(home)
    yield
    if old is None:
        os.environ.pop("MLANET_HOME", None)
    else:
        os.environ["MLANET_HOME"] = old


@pytest.fixture()
def python_sigint_handler():
    """Python's own Ctrl-C handler for one test, whatever the test process inherited.

    A process started in the background by a non-interactive shell (`cmd &`, nohup) begins with SIGINT
    ignored; tests that check the handler is restored to Python's default need that default to start from.
    """
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def gl_clip():
    """``clip(camera, points (B, N, 3), near, far) -> (B, N, 4)``: OpenGL clip coordinates of camera-frame
    points (metres) through ``PinholeCamera.projection_matrix_gl``, the matrix the renderer uploads as
    ``u_proj`` (what its vertex shaders compute; tests feed them to clip-space shaders and compare)."""
    import torch

    def clip(camera, points, near: float, far: float):
        homog = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
        return (camera.projection_matrix_gl(near, far)[:, None] @ homog[..., None])[..., 0]

    return clip


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / ICT_ARCHIVE).is_file():
        pytest.skip(f"shared data not found at {path} (set MLANET_SHARED)")
    return path


@pytest.fixture(scope="session")
def synthetic_data():
    from mlanet.morphable.synthetic import make_synthetic_face_model

    return make_synthetic_face_model()


@pytest.fixture()
def synthetic_model(synthetic_data):
    from mlanet.morphable.model import MorphableModel

    return MorphableModel(synthetic_data)


@pytest.fixture(scope="session")
def ict_model_file(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real ICT face model, built once per session from the shared archive (with MediaPipe)."""
    from mlanet.morphable.sources.ict import build_ict_face_model

    data = build_ict_face_model(shared / ICT_ARCHIVE, mediapipe_obj=shared / MEDIAPIPE_OBJ)
    return data.save(tmp_path_factory.mktemp("ict") / "ict_face.mlface.npz")


@pytest.fixture(scope="session")
def ict_data(ict_model_file: Path):
    from mlanet.morphable.data import FaceModelData

    return FaceModelData.load(ict_model_file)


@pytest.fixture(scope="session")
def ict_unpacked(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared archive unpacked into a temporary FaceXModel/ folder."""
    import tarfile

    dest = tmp_path_factory.mktemp("ict_src") / "FaceXModel"
    dest.mkdir()
    with tarfile.open(shared / ICT_ARCHIVE) as tf:
        tf.extractall(dest, filter="data")
    return dest


def informative_untrained_model(face_model, input_size: int, name: str = "mlanet_mobile"):
    """An untrained network whose output depends on the image, for parity tests between backends.

    Freshly initialised, the heads sit on the neutral prior and BatchNorm statistics are 0/1, so
    every image gives nearly the same face and a vertex-space parity check could not tell a broken
    backend from a working one. Calibrating BatchNorm on random images (cumulative average) and
    giving the last head layers weights N(0, 0.002 * sqrt(1280 / pooled width)) moves the vertices by ~30 mm between random
    images while the pose stays plausible (depth ~1.0-1.05 m, angles < 0.1 rad).
    """
    import torch

    from mlanet.models.registry import create_model
    from mlanet.preprocess import PreprocessCfg

    m = create_model(name, face_model=face_model, preprocess=PreprocessCfg(input_size=input_size))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.momentum = None  # cumulative average over the calibration batches
        m.train()
        for _ in range(4):
            m(torch.rand(16, 3, input_size, input_size, generator=gen))
        std = 0.002 * (1280 / m.feature_channels) ** 0.5  # the same output spread for any pooled width
        for head in m.heads.values():
            head[-1].weight.normal_(0.0, std, generator=gen)
            head[-1].bias.normal_(0.0, 0.01, generator=gen)
    return m.eval()


@pytest.fixture(scope="session")
def obama_clip_24(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 24 frames of the shared 720p Obama clip at 640x360, 25 fps, re-encoded with PyAV (keeps
    the command-line tests fast)."""
    import av
    import numpy as np

    out = tmp_path_factory.mktemp("clips") / "obama_360p_24.mp4"
    with av.open(str(shared / "data/video/obama_720p.mp4")) as src, \
            av.open(str(out), "w", options={"movflags": "faststart"}) as dst:
        st = dst.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 640, 360, "yuv420p"
        for i, f in enumerate(src.decode(video=0)):
            if i == 24:
                break
            img = f.to_ndarray(format="rgb24")[::2, ::2]
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                dst.mux(pkt)
        for pkt in st.encode():
            dst.mux(pkt)
    return out
