#version 330 core
// Positions already in OpenGL clip space (see PinholeCamera.to_clip), one colour per draw.
in vec4 in_clip;
void main() {
    gl_Position = in_clip;
}
