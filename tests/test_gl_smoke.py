"""Headless OpenGL works (EGL + Mesa llvmpipe in CI) and agrees with the camera conventions."""

import numpy as np
import pytest
import torch

from mlanet.geometry.camera import PinholeCamera
from mlanet.shaders import load_shader

pytestmark = pytest.mark.gl


def test_triangle_lands_where_the_camera_projects_it(gl_clip):
    import moderngl

    W, H = 64, 48
    ctx = moderngl.create_standalone_context(backend="egl")
    try:
        cam = PinholeCamera.from_fov(W, H, fov_y=np.deg2rad(40.0))
        # a CCW-front triangle (normal towards the camera, -z) in the camera frame, upper-left quadrant
        pts = torch.tensor([[[-0.30, -0.30, 2.0], [-0.30, -0.05, 2.0], [-0.05, -0.30, 2.0]]])
        n = torch.cross(pts[0, 1] - pts[0, 0], pts[0, 2] - pts[0, 0], dim=0)
        assert n[2] < 0
        clip = gl_clip(cam, pts, near=0.1, far=10.0)[0].numpy().astype("f4")
        prog = ctx.program(vertex_shader=load_shader("flat_color.vert"), fragment_shader=load_shader("flat_color.frag"))
        prog["u_color"].value = (1.0, 0.0, 0.0, 1.0)
        vao = ctx.vertex_array(prog, [(ctx.buffer(clip.tobytes()), "4f", "in_clip")])
        fbo = ctx.simple_framebuffer((W, H))
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 1.0)
        ctx.enable(moderngl.CULL_FACE)  # default: cull back faces, CCW front
        vao.render(moderngl.TRIANGLES)
        img = np.frombuffer(fbo.read(components=3), dtype=np.uint8).reshape(H, W, 3)[::-1]  # top-down
        px = cam.project(pts)[0].numpy()
        centroid = px.mean(axis=0)
        u, v = int(centroid[0]), int(centroid[1])
        assert img[v, u, 0] == 255, "the front face was culled or drawn elsewhere"
        assert img[H - 2, W - 2, 0] == 0
        red = np.argwhere(img[..., 0] > 0)
        # every red pixel centre lies inside the projected triangle's bounding box (pixel-centre convention)
        assert red[:, 1].min() + 0.5 >= px[:, 0].min() - 1e-3 and red[:, 1].max() + 0.5 <= px[:, 0].max() + 1e-3
        assert red[:, 0].min() + 0.5 >= px[:, 1].min() - 1e-3 and red[:, 0].max() + 0.5 <= px[:, 1].max() + 1e-3
    finally:
        ctx.release()
