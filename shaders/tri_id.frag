#version 330 core
// Writes id + 1 as a 24-bit integer in RGB8 (R = low byte); cleared black (0) is background.
flat in int v_id;
out vec4 frag_color;
void main() {
    int k = v_id + 1;
    frag_color = vec4(float(k & 255), float((k >> 8) & 255), float((k >> 16) & 255), 255.0) / 255.0;
}
