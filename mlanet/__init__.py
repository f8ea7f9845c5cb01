"""MLANet: real-time 3D face reconstruction from a single image or a video stream.

Importing this package is cheap: it imports no heavy optional dependency (tensorrt, pycuda,
onnxruntime, moderngl, mediapipe, cv2). Sub-packages:

- :mod:`mlanet.morphable` face models (ICT-FaceKit, Basel Face Model), the asset builder.
- :mod:`mlanet.geometry` camera, rotations, spherical harmonics, mesh normals.
- :mod:`mlanet.params` the flat parameter layout (:class:`~mlanet.params.ParamLayout`).
- :mod:`mlanet.export`, :mod:`mlanet.edge` deployment (installed from ``export/``, ``edge/``).
"""

__version__ = "0.1.0"
