#version 330 core
// "photo": the mesh textured with the frame itself through its projection. Each fragment's
// interpolated camera-frame point p is projected with the intrinsics K (PinholeCamera.intrinsics,
// pixels, uploaded transposed): (u, v) = (K p).xy / p.z, exactly PinholeCamera.project, done per
// fragment so the lookup is exact (per-vertex pixels interpolated perspective-correctly would not
// be). The frame texture holds image row 0 at t = 0, so the texture coordinate of continuous pixel
// (u, v) (origin top-left, pixel centres at i + 0.5) is (u, v) / image size -- no flip.
// u_photo_shading blends towards a grey surface lit by the SH lighting (0 = pure photo).
#include "face_common.glsl"
#include "sh_lighting.glsl"

uniform sampler2D u_frame;
uniform mat3 u_K;
uniform vec2 u_image_size;   // (W, H) pixels
uniform float u_photo_shading;
uniform vec3 u_grey;         // albedo of the grey-lit surface

in vec3 v_position;
in vec3 v_normal;
in vec3 v_albedo;
out vec4 frag_color;

void main() {
    vec3 q = u_K * v_position;
    vec3 photo = texture(u_frame, (q.xy / q.z) / u_image_size).rgb;
    vec3 lit = u_grey * sh_irradiance(safe_normalize(v_normal));
    frag_color = finish_colour(mix(photo, clamp(lit, 0.0, 1.0), u_photo_shading));
}
