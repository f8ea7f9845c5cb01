#version 330 core
// "normals" (debug): the unit camera-frame normal as a colour, rgb = 0.5 * n + 0.5 (OpenCV frame:
// a normal facing the camera, (0, 0, -1), is (0.5, 0.5, 0); pointing image-right adds red,
// pointing image-down adds green).
#include "face_common.glsl"

in vec3 v_position;
in vec3 v_normal;
in vec3 v_albedo;
out vec4 frag_color;

void main() {
    frag_color = finish_colour(0.5 * safe_normalize(v_normal) + 0.5);
}
