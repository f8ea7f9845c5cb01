#version 330 core
// Triangle-id pass: positions already in OpenGL clip space (PinholeCamera.projection_matrix_gl applied to the vertices), one integer
// id per vertex (every vertex of a triangle carries the triangle's index; draw unindexed).
in vec4 in_clip;
in int in_id;
flat out int v_id;
void main() {
    gl_Position = in_clip;
    v_id = in_id;
}
