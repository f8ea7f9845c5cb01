#version 330 core
// Render INTO texture (UV) space: each GL vertex is one distinct (model vertex, uv) corner, so UV
// seams stay seams. in_uv is the face model's uv in [0, 1] with origin bottom-left (OBJ/OpenGL
// texture convention): uv (0, 0) -> NDC (-1, -1) = first row of the framebuffer read-back, so the
// read-back rows reversed are a top-down texture image with v = 1 at the top (what OBJ expects).
// in_position / in_normal: camera frame (OpenCV), metres; interpolated affinely over the triangle
// in UV space (w = 1), which is exact because position is linear in barycentric coordinates.
in vec3 in_position;
in vec3 in_normal;
in vec2 in_uv;

out vec3 v_position;
out vec3 v_normal;

void main() {
    v_position = in_position;
    v_normal = in_normal;
    gl_Position = vec4(in_uv * 2.0 - 1.0, 0.0, 1.0);
}
