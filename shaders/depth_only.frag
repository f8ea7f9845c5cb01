#version 330 core
// Depth-only pass (pre-pass for transparent meshes and hidden-line wireframes, and the camera-view
// depth map of uv_unwrap.frag): writes nothing but depth.
void main() {
}
