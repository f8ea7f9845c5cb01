// Final colour of a face fragment (include file; no #version): clamp to [0, 1], mix towards the
// per-track tint by u_tint.a (0 = untinted), and carry the mesh opacity u_alpha for blending
// over the frame (SRC_ALPHA, ONE_MINUS_SRC_ALPHA).
uniform float u_alpha;
uniform vec4 u_tint;

vec4 finish_colour(vec3 colour) {
    return vec4(mix(clamp(colour, 0.0, 1.0), u_tint.rgb, u_tint.a), u_alpha);
}

// Unit normal from an interpolated one (zero stays zero instead of NaN).
vec3 safe_normalize(vec3 v) {
    float len = length(v);
    return len > 1e-12 ? v / len : vec3(0.0);
}
