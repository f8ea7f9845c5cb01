#version 330 core
// Positions already in OpenGL clip space (PinholeCamera.projection_matrix_gl applied to the vertices), one colour per draw.
in vec4 in_clip;
void main() {
    gl_Position = in_clip;
}
