"use strict";
// MLANet live viewer, served by `mlanet-live --serve`: the face model's mesh (/face.glb, with its
// ARKit-named morph targets) driven by the JSON messages of the /stream WebSocket.
// Plain WebGL2 written for this project: no library, nothing fetched from elsewhere.
// Frames: the GLB is in glTF's frame (+Y up, +Z towards the viewer); a message's "q" is the head
// rotation (x, y, z, w) in that frame, so the identity faces the default view.
// Mouse: drag to orbit, wheel to zoom, double-click to reset the view.

const hud = document.getElementById("hud");
const canvas = document.getElementById("view");

const live = {
  quat: [0, 0, 0, 1], weights: null, frame: null, track: null, faceVisible: false,
  status: "connecting", messages: [], draws: [], received: 0,
};
const orbit = { yaw: 0, pitch: 0, distance: 1, home: 1 };

// ------------------------------------------------------------------ GLB
function parseGlb(buffer) {
  const dv = new DataView(buffer);
  if (dv.byteLength < 20 || dv.getUint32(0, true) !== 0x46546C67) throw new Error("face.glb is not a GLB file");
  let offset = 12, json = null, bin = null;
  while (offset + 8 <= dv.byteLength) {
    const length = dv.getUint32(offset, true), type = dv.getUint32(offset + 4, true), start = offset + 8;
    if (type === 0x4E4F534A) json = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, start, length)));
    else if (type === 0x004E4942) bin = buffer.slice(start, start + length);
    offset = start + length;
  }
  if (!json || !bin) throw new Error("face.glb lacks its JSON or binary chunk");
  return { json, bin };
}

function readAccessor(glb, index) {
  const a = glb.json.accessors[index], view = glb.json.bufferViews[a.bufferView];
  const size = { SCALAR: 1, VEC2: 2, VEC3: 3, VEC4: 4 }[a.type] * a.count;
  const Type = { 5126: Float32Array, 5125: Uint32Array, 5123: Uint16Array }[a.componentType];
  return new Type(glb.bin, (view.byteOffset || 0) + (a.byteOffset || 0), size);
}

function meshFromGlb(glb) {
  const mesh = glb.json.meshes[0], prim = mesh.primitives[0];
  const positions = readAccessor(glb, prim.attributes.POSITION);
  const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < positions.length; i += 3)
    for (let c = 0; c < 3; ++c) { lo[c] = Math.min(lo[c], positions[i + c]); hi[c] = Math.max(hi[c], positions[i + c]); }
  return {
    positions, indices: readAccessor(glb, prim.indices),
    targets: (prim.targets || []).map(t => readAccessor(glb, t.POSITION)),
    names: (mesh.extras && mesh.extras.targetNames) || [],
    centre: lo.map((l, c) => 0.5 * (l + hi[c])),
    radius: 0.5 * Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]),
  };
}

// ------------------------------------------------------------------ 4x4 matrices (column-major)
function multiply(a, b) {
  const o = new Float32Array(16);
  for (let c = 0; c < 4; ++c)
    for (let r = 0; r < 4; ++r) {
      let s = 0;
      for (let k = 0; k < 4; ++k) s += a[k * 4 + r] * b[c * 4 + k];
      o[c * 4 + r] = s;
    }
  return o;
}
function perspective(fovy, aspect, near, far) {
  const f = 1 / Math.tan(fovy / 2), o = new Float32Array(16);
  o[0] = f / aspect; o[5] = f; o[10] = (far + near) / (near - far); o[11] = -1; o[14] = 2 * far * near / (near - far);
  return o;
}
function lookAt(eye, target, up) {
  const sub = (a, b) => a.map((x, i) => x - b[i]);
  const norm = v => { const l = Math.hypot(...v); return v.map(x => x / l); };
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const z = norm(sub(eye, target)), x = norm(cross(up, z)), y = cross(z, x);
  return new Float32Array([x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0,
    -dot(x, eye), -dot(y, eye), -dot(z, eye), 1]);
}
function fromQuaternion(q) {
  const [x, y, z, w] = q;
  return new Float32Array([
    1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w), 0,
    2 * (x * y - z * w), 1 - 2 * (x * x + z * z), 2 * (y * z + x * w), 0,
    2 * (x * z + y * w), 2 * (y * z - x * w), 1 - 2 * (x * x + y * y), 0,
    0, 0, 0, 1]);
}
function translation(t) {
  return new Float32Array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, t[0], t[1], t[2], 1]);
}

// ------------------------------------------------------------------ WebGL2
const MAX_ACTIVE = 64;
const VERTEX_SHADER = `#version 300 es
precision highp float; precision highp int; precision highp sampler2D;
layout(location = 0) in vec3 aPosition;
uniform sampler2D uTargets;   // morph displacements: texel (target * vertices + vertex)
uniform int uTexWidth, uVertices, uActive;
uniform int uTarget[${MAX_ACTIVE}];
uniform float uWeight[${MAX_ACTIVE}];
uniform mat4 uModel, uViewProjection;
out vec3 vWorld;
void main() {
  vec3 p = aPosition;
  for (int j = 0; j < ${MAX_ACTIVE}; ++j) {
    if (j >= uActive) break;
    int i = uTarget[j] * uVertices + gl_VertexID;
    p += uWeight[j] * texelFetch(uTargets, ivec2(i % uTexWidth, i / uTexWidth), 0).xyz;
  }
  vec4 world = uModel * vec4(p, 1.0);
  vWorld = world.xyz;
  gl_Position = uViewProjection * world;
}`;
const FRAGMENT_SHADER = `#version 300 es
precision highp float;
in vec3 vWorld;
uniform vec3 uEye;
out vec4 outColour;
void main() {
  vec3 n = normalize(cross(dFdx(vWorld), dFdy(vWorld)));   // faceted normals follow the morphs
  vec3 v = normalize(uEye - vWorld);
  if (dot(n, v) < 0.0) n = -n;
  vec3 up = vec3(0.0, 1.0, 0.0);
  float diffuse = 0.65 * max(dot(n, v), 0.0) + 0.2 * max(dot(n, up), 0.0);
  float specular = 0.12 * pow(max(dot(n, normalize(v + up * 0.3)), 0.0), 30.0);
  vec3 skin = vec3(0.86, 0.69, 0.59);
  outColour = vec4(skin * (0.25 + diffuse) + specular, 1.0);
}`;

function compile(gl, vsText, fsText) {
  const shader = (type, text) => {
    const s = gl.createShader(type);
    gl.shaderSource(s, text); gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  };
  const p = gl.createProgram();
  gl.attachShader(p, shader(gl.VERTEX_SHADER, vsText));
  gl.attachShader(p, shader(gl.FRAGMENT_SHADER, fsText));
  gl.linkProgram(p);
  if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
  return p;
}

function upload(gl, mesh) {
  const vao = gl.createVertexArray();
  gl.bindVertexArray(vao);
  const vbo = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, vbo);
  gl.bufferData(gl.ARRAY_BUFFER, mesh.positions, gl.STATIC_DRAW);
  gl.enableVertexAttribArray(0);
  gl.vertexAttribPointer(0, 3, gl.FLOAT, false, 0, 0);
  const ibo = gl.createBuffer();
  gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, ibo);
  gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, mesh.indices, gl.STATIC_DRAW);
  gl.bindVertexArray(null);

  const vertices = mesh.positions.length / 3, texels = Math.max(1, mesh.targets.length * vertices);
  const width = Math.min(4096, gl.getParameter(gl.MAX_TEXTURE_SIZE)), height = Math.ceil(texels / width);
  const data = new Float32Array(width * height * 3);
  mesh.targets.forEach((t, k) => data.set(t, k * vertices * 3));
  const texture = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D, texture);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB32F, width, height, 0, gl.RGB, gl.FLOAT, data);
  for (const p of [gl.TEXTURE_MIN_FILTER, gl.TEXTURE_MAG_FILTER]) gl.texParameteri(gl.TEXTURE_2D, p, gl.NEAREST);
  return { vao, texture, width, vertices, count: mesh.indices.length };
}

// ------------------------------------------------------------------ stream
function connect(targetOf) {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/stream";
  const ws = new WebSocket(url);
  ws.onopen = () => { live.status = "connected, waiting for frames"; };
  ws.onmessage = event => {
    const m = JSON.parse(event.data);
    if (m.type === "hello") { targetOf.length = 0; m.names.forEach(n => targetOf.push(n)); return; }
    live.received += 1;
    live.messages.push(performance.now());
    live.frame = m.frame;
    live.faceVisible = m.type === "face";
    if (m.type === "face") { live.quat = m.q; live.weights = m.w; live.track = m.track; }
    live.status = live.faceVisible ? "live" : "no face in view";
    document.title = `MLANet live: frame ${m.frame}`;
    document.body.dataset.received = String(live.received);
  };
  ws.onclose = () => { live.status = "disconnected, retrying"; setTimeout(() => connect(targetOf), 1000); };
}

function perSecond(times, now) {
  while (times.length && now - times[0] > 1000) times.shift();
  return times.length;
}

// ------------------------------------------------------------------ main
async function main() {
  const gl = canvas.getContext("webgl2", { antialias: true, preserveDrawingBuffer: true });
  if (!gl) { hud.textContent = "this browser has no WebGL2"; document.title = "MLANet live: no WebGL2"; return; }
  const response = await fetch("face.glb");
  if (!response.ok) throw new Error(`face.glb: HTTP ${response.status}`);
  const mesh = meshFromGlb(parseGlb(await response.arrayBuffer()));
  const gpu = upload(gl, mesh);
  const program = compile(gl, VERTEX_SHADER, FRAGMENT_SHADER);
  const u = name => gl.getUniformLocation(program, name);
  const streamNames = [];  // the stream's weight order (hello message)
  orbit.home = orbit.distance = 1.25 * mesh.radius / Math.tan(Math.PI / 12);
  connect(streamNames);

  canvas.addEventListener("pointerdown", e => { canvas.setPointerCapture(e.pointerId); orbit.drag = [e.clientX, e.clientY]; });
  canvas.addEventListener("pointerup", () => { orbit.drag = null; });
  canvas.addEventListener("pointermove", e => {
    if (!orbit.drag) return;
    orbit.yaw -= 0.008 * (e.clientX - orbit.drag[0]);
    orbit.pitch = Math.max(-1.4, Math.min(1.4, orbit.pitch + 0.008 * (e.clientY - orbit.drag[1])));
    orbit.drag = [e.clientX, e.clientY];
  });
  canvas.addEventListener("wheel", e => { e.preventDefault(); orbit.distance *= Math.exp(0.001 * e.deltaY); }, { passive: false });
  canvas.addEventListener("dblclick", () => { orbit.yaw = 0; orbit.pitch = 0; orbit.distance = orbit.home; });

  const targetIndex = new Map(mesh.names.map((n, i) => [n, i]));
  const draw = () => {
    const now = performance.now();
    live.draws.push(now);
    const w = Math.floor(canvas.clientWidth * devicePixelRatio), h = Math.floor(canvas.clientHeight * devicePixelRatio);
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    gl.viewport(0, 0, w, h);
    gl.clearColor(0.125, 0.133, 0.157, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.enable(gl.DEPTH_TEST);

    const eye = [orbit.distance * Math.cos(orbit.pitch) * Math.sin(orbit.yaw), orbit.distance * Math.sin(orbit.pitch),
      orbit.distance * Math.cos(orbit.pitch) * Math.cos(orbit.yaw)];
    const viewProjection = multiply(perspective(Math.PI / 6, w / Math.max(h, 1), 0.01, 20), lookAt(eye, [0, 0, 0], [0, 1, 0]));
    const model = multiply(fromQuaternion(live.quat), translation(mesh.centre.map(x => -x)));
    const active = [], weights = [];
    if (live.weights) {
      live.weights.forEach((value, j) => {
        const k = targetIndex.get(streamNames[j]);
        if (k !== undefined && value !== 0 && active.length < MAX_ACTIVE) { active.push(k); weights.push(value); }
      });
    }
    gl.useProgram(program);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, gpu.texture);
    gl.uniform1i(u("uTargets"), 0);
    gl.uniform1i(u("uTexWidth"), gpu.width);
    gl.uniform1i(u("uVertices"), gpu.vertices);
    gl.uniform1i(u("uActive"), active.length);
    if (active.length) { gl.uniform1iv(u("uTarget"), active); gl.uniform1fv(u("uWeight"), weights); }
    gl.uniformMatrix4fv(u("uModel"), false, model);
    gl.uniformMatrix4fv(u("uViewProjection"), false, viewProjection);
    gl.uniform3fv(u("uEye"), eye);
    gl.bindVertexArray(gpu.vao);
    gl.drawElements(gl.TRIANGLES, gpu.count, gl.UNSIGNED_INT, 0);

    hud.textContent = `stream ${perSecond(live.messages, now)} fps   render ${perSecond(live.draws, now)} fps\n` +
      (live.frame === null ? "" : `frame ${live.frame}   track ${live.track ?? "-"}\n`) + live.status;
    requestAnimationFrame(draw);
  };
  document.body.dataset.meshVertices = String(gpu.vertices);
  requestAnimationFrame(draw);
}

main().catch(err => { hud.textContent = `error: ${err.message}`; document.title = "MLANet live: error"; });
