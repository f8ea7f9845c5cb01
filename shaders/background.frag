#version 330 core
// The frame (RGB uint8 texture, row 0 = image top at t = 0) drawn through image_plane.vert.
uniform sampler2D u_frame;
in vec2 v_texcoord;
out vec4 frag_color;

void main() {
    frag_color = vec4(texture(u_frame, v_texcoord).rgb, 1.0);
}
