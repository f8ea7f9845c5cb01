#version 330 core
// Geometry given in image pixels: the frame background quad, landmark points, the window blit.
// in_pixel is a continuous pixel (u, v) (origin top-left, +v down, pixel centres at i + 0.5). It is
// placed on the camera-frame plane z = u_plane_depth (metres, between near and far) by
//     p = u_plane_depth * K^-1 (u, v, 1)      (PinholeCamera.unproject)
// and taken to clip space by the same u_proj as the mesh (PinholeCamera.projection_matrix_gl,
// uploaded transposed). So frame pixel (u, v) lands on output pixel (u, v) and the only y flip is
// still the one inside projection_matrix_gl. v_texcoord = (u, v) / image size addresses a texture
// uploaded with image row 0 first (at t = 0).
uniform mat3 u_K_inv;
uniform mat4 u_proj;
uniform float u_plane_depth;
uniform vec2 u_image_size;   // (W, H) pixels
uniform float u_point_size;  // pixels, for GL_POINTS (needs PROGRAM_POINT_SIZE)

in vec2 in_pixel;
out vec2 v_texcoord;

void main() {
    vec3 p = u_plane_depth * (u_K_inv * vec3(in_pixel, 1.0));
    gl_Position = u_proj * vec4(p, 1.0);
    gl_PointSize = u_point_size;
    v_texcoord = in_pixel / u_image_size;
}
