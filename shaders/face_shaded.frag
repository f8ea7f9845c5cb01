#version 330 core
// "shaded": the per-vertex SH shade of face_shaded.vert (albedo * E(n), see sh_lighting.glsl),
// interpolated across the triangle, clamped and tinted here.
#include "face_common.glsl"

in vec3 v_colour;
out vec4 frag_color;

void main() {
    frag_color = finish_colour(v_colour);
}
