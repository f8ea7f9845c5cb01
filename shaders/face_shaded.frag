#version 330 core
// "shaded": per-pixel SH shading, albedo * E(n) with n the renormalised interpolated vertex
// normal (camera frame) -- see sh_lighting.glsl for the basis and constants.
#include "face_common.glsl"
#include "sh_lighting.glsl"

in vec3 v_position;
in vec3 v_normal;
in vec3 v_albedo;
out vec4 frag_color;

void main() {
    frag_color = finish_colour(v_albedo * sh_irradiance(safe_normalize(v_normal)));
}
