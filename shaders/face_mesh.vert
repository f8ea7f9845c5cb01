#version 330 core
// Face mesh vertex stage, shared by every camera-view face pass (shaded, albedo, normals, photo,
// wireframe, depth pre-pass). Conventions (docs/conventions.md):
//   in_position  camera-frame point, OpenCV frame (+x right, +y down, +z forward), metres.
//   in_normal    unit outward vertex normal in the same frame (computed on the CPU per frame).
//   in_albedo    linear RGB in [0, 1].
//   u_proj       PinholeCamera.projection_matrix_gl(near, far), uploaded transposed (GLSL is
//                column-major). It is THE OpenCV -> OpenGL flip (the y flip, w_clip = +z); nothing
//                here flips y, negates z or changes winding, so our front faces (CCW in a y-up
//                view) are front faces under the default glFrontFace(GL_CCW).
uniform mat4 u_proj;

in vec3 in_position;
in vec3 in_normal;
in vec3 in_albedo;

out vec3 v_position;  // camera frame, metres (interpolated perspective-correctly)
out vec3 v_normal;
out vec3 v_albedo;

void main() {
    v_position = in_position;
    v_normal = in_normal;
    v_albedo = in_albedo;
    gl_Position = u_proj * vec4(in_position, 1.0);
}
