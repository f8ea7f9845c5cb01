#version 330 core
// "albedo": unlit interpolated albedo (linear RGB in [0, 1]).
#include "face_common.glsl"

in vec3 v_position;
in vec3 v_normal;
in vec3 v_albedo;
out vec4 frag_color;

void main() {
    frag_color = finish_colour(v_albedo);
}
