#version 330 core
// "shaded" face pass, vertex stage: the SH shade albedo * E(n) per vertex (Gouraud), interpolated
// linearly across each triangle. Same conventions and projection as face_mesh.vert. The ICT face's
// vertices lie a few pixels apart at overlay sizes and E(n) is a smooth second-order polynomial of
// the normal, so this matches a per-pixel evaluation to about one grey level, at exactly the vertex
// colours mlanet.geometry.sh.sh_shade computes (tests/test_gl_renderer.py), for a third less
// rasterisation work on a software rasteriser (one interpolated colour instead of position, normal
// and albedo, and no per-fragment lighting).
#include "face_common.glsl"
#include "sh_lighting.glsl"

uniform mat4 u_proj;

in vec3 in_position;
in vec3 in_normal;
in vec3 in_albedo;

out vec3 v_colour;  // unclamped linear RGB; finish_colour clamps per fragment

void main() {
    v_colour = in_albedo * sh_irradiance(safe_normalize(in_normal));
    gl_Position = u_proj * vec4(in_position, 1.0);
}
