#version 330 core
// Per texel of the face's UV map: the frame colour at the texel's surface point, and whether that
// point is visible from the camera (alpha 1) or not (alpha 0, colour 0).
//
// Visible = in front of the camera (z > near), projecting inside the image, facing the camera
// (unit normal . direction to the camera > u_min_facing) and not occluded. Occlusion is tested
// shadow-map style against u_depth, a depth texture rendered beforehand from the camera with
// face_mesh.vert (back faces culled): the point's camera depth z must not exceed the largest linear
// depth of the 2x2 depth texels around its projection by more than u_depth_tolerance (metres).
//
// Projection: (u, v) = (K p).xy / p.z (PinholeCamera.project) for the frame lookup, texture
// coordinate (u, v) / image size (frame row 0 at t = 0). The depth texture is in GL window
// coordinates, so it is addressed through u_proj (PinholeCamera.projection_matrix_gl) and GL's
// viewport transform, window = (ndc.xy * 0.5 + 0.5) * size; its stored window depth d maps back to
// camera z by inverting projection_matrix_gl's z_ndc = (f + n) / (f - n) - 2 f n / ((f - n) z), z_ndc = 2 d - 1.
uniform sampler2D u_frame;
uniform sampler2D u_depth;
uniform mat3 u_K;
uniform mat4 u_proj;
uniform vec2 u_image_size;   // (W, H) pixels
uniform float u_near;        // metres
uniform float u_far;
uniform float u_depth_tolerance;
uniform float u_min_facing;

in vec3 v_position;
in vec3 v_normal;
out vec4 frag_color;

float linear_depth(float d) {
    float z_ndc = 2.0 * d - 1.0;
    return 2.0 * u_far * u_near / ((u_far + u_near) - z_ndc * (u_far - u_near));
}

void main() {
    vec3 p = v_position;
    bool visible = p.z > u_near;
    vec3 q = u_K * p;
    vec2 pix = q.xy / q.z;
    visible = visible && all(greaterThanEqual(pix, vec2(0.0))) && all(lessThan(pix, u_image_size));
    float len = length(v_normal);
    vec3 n = len > 1e-12 ? v_normal / len : vec3(0.0);
    visible = visible && dot(n, -normalize(p)) > u_min_facing;
    if (visible) {
        vec4 clip = u_proj * vec4(p, 1.0);
        vec2 window = (clip.xy / clip.w * 0.5 + 0.5) * u_image_size;
        ivec2 base = ivec2(floor(window - 0.5));
        ivec2 last = ivec2(u_image_size) - 1;
        float d = 0.0;  // largest window depth (so camera z: monotonic) around the projection
        for (int j = 0; j < 2; ++j) {
            for (int i = 0; i < 2; ++i) {
                d = max(d, texelFetch(u_depth, clamp(base + ivec2(i, j), ivec2(0), last), 0).r);
            }
        }
        visible = p.z <= linear_depth(d) + u_depth_tolerance;
    }
    vec3 colour = visible ? texture(u_frame, pix / u_image_size).rgb : vec3(0.0);
    frag_color = vec4(colour, visible ? 1.0 : 0.0);
}
