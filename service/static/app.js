// emoserve browser demo: webcam -> canvas -> JPEG blob -> WebSocket /v1/stream; draws the results.
// State for tests and debugging is exposed on window.emoserve.
"use strict";

const COLOURS = ["#00ff00", "#ff00ff", "#00ffff", "#ffff00", "#ff8000", "#0080ff"];
const state = (window.emoserve = {
  status: "starting", results: 0, errors: 0, lastResult: null, drawn: [],
  fps: 0, latencyMs: null, dropped: 0, framesSent: 0, analysisSize: 0,
});

const video = document.getElementById("video");
const view = document.getElementById("view");
const ctx = view.getContext("2d");
const grab = document.createElement("canvas");
const grabCtx = grab.getContext("2d");
const $ = (id) => document.getElementById(id);

let ws = null;
let inFlight = 0;            // frames sent whose result has not come back (we keep at most 1)
let lastFaces = [];
const sentAt = new Map();    // frame id -> performance.now() when sent
const sentScale = new Map(); // frame id -> the scale it was sent at (< 1: downscaled to the server's analysis size)
const resultTimes = [];      // arrival times of the last results, for fps

function setStatus(text) { state.status = text; $("status").textContent = text; }

function streamUrl() {
  const url = new URL("/v1/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

// The key comes from the page's fragment (/#api_key=...), which browsers never send to the server,
// and goes to the server in the stream's first message, never in a URL.
function apiKey() { return new URLSearchParams(location.hash.slice(1)).get("api_key"); }

function sendConfig() {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(JSON.stringify({
    type: "config", smoothing: parseFloat($("smoothing").value), track: $("track").checked,
  }));
}

function connect() {
  ws = new WebSocket(streamUrl());
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    const key = apiKey();
    if (key) ws.send(JSON.stringify({ type: "auth", api_key: key }));
    setStatus("streaming"); inFlight = 0; state.analysisSize = 0; sendConfig();
  };
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = (event) => {
    setStatus(`closed ${event.code}${event.reason ? ": " + event.reason : ""}`);
    if (event.code !== 1008 && event.code !== 1009) setTimeout(connect, 1000);
  };
}

// A face of a downscaled frame, back in the video's pixels.
function scaleFace(face, k) {
  if (k === 1) return face;
  const b = face.box, ex = face.explanation;
  return { ...face, box: { x1: b.x1 * k, y1: b.y1 * k, x2: b.x2 * k, y2: b.y2 * k },
    landmarks: face.landmarks && face.landmarks.map(([x, y]) => [x * k, y * k]),
    explanation: ex && { ...ex, affine: ex.affine.map((row) => row.map((v) => v * k)) } };
}

// Frames up to `id` are answered or dropped: their scales go.
function forgetSent(id) { for (const sent of [...sentScale.keys()]) if (sent <= id) sentScale.delete(sent); }

function onMessage(msg) {
  if (msg.type === "hello") {  // the size the server analyses frames at: larger frames are sent downscaled
    state.analysisSize = msg.analysis_size;
  } else if (msg.type === "result") {
    const k = 1 / (sentScale.get(msg.frame_id) ?? 1);
    forgetSent(msg.frame_id);
    msg.faces = msg.faces.map((face) => scaleFace(face, k));
    inFlight = Math.max(0, inFlight - 1);
    state.results += 1;
    state.lastResult = msg;
    state.dropped += msg.dropped_since_last;
    const now = performance.now();
    const t0 = sentAt.get(msg.frame_id);
    sentAt.delete(msg.frame_id);
    if (t0 !== undefined) state.latencyMs = Math.round(now - t0);
    resultTimes.push(now);
    while (resultTimes.length && now - resultTimes[0] > 1000) resultTimes.shift();
    state.fps = resultTimes.length;
    lastFaces = msg.faces;
    showStats();
    showFaces(msg.faces);
  } else if (msg.type === "error") {
    if (msg.frame_id !== null) forgetSent(msg.frame_id);
    inFlight = Math.max(0, inFlight - 1);
    state.errors += 1;
  }
}

function showStats() {
  $("fps").textContent = state.fps;
  $("latency").textContent = state.latencyMs ?? "–";
  $("dropped").textContent = state.dropped;
}

function showFaces(faces) {
  const box = $("faces");
  box.innerHTML = "";
  for (const face of faces) {
    const div = document.createElement("div");
    div.className = "face";
    const h = document.createElement("h3");
    h.textContent = `#${face.track_id ?? "–"} ${face.emotion.label} ${(face.emotion.confidence * 100).toFixed(0)}%` +
      (face.classified === false ? ` (kept ${face.emotion_age} frames)` : "");
    div.appendChild(h);
    for (const [label, p] of Object.entries(face.emotion.smoothed_scores)) {
      const row = document.createElement("div");
      row.className = "bar";
      row.innerHTML = `<span>${label}</span><i style="width:${Math.round(p * 120)}px"></i>`;
      div.appendChild(row);
    }
    box.appendChild(div);
  }
}

function colourFor(face, i) {
  const n = face.track_id ?? i;
  return COLOURS[n % COLOURS.length];
}

function draw() {
  const w = video.videoWidth, h = video.videoHeight;
  if (w && h) {
    if (view.width !== w || view.height !== h) { view.width = w; view.height = h; }
    ctx.drawImage(video, 0, 0, w, h);
    const drawn = [];
    lastFaces.forEach((face, i) => {
      const b = face.box, colour = colourFor(face, i);
      ctx.lineWidth = 4;
      ctx.strokeStyle = colour;
      ctx.strokeRect(b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1);
      // "·" marks an emotion carried over from an earlier frame (reuse across frames)
      const caption = `#${face.track_id ?? "–"} ${face.emotion.label} ${(face.emotion.confidence * 100).toFixed(0)}%` +
        (face.classified === false ? " ·" : "");
      ctx.font = "bold 16px system-ui, sans-serif";
      const tw = ctx.measureText(caption).width;
      const top = Math.max(20, b.y1);
      ctx.fillStyle = colour;
      ctx.fillRect(b.x1, top - 20, tw + 8, 20);
      ctx.fillStyle = "#000";
      ctx.fillText(caption, b.x1 + 4, top - 5);
      // emotion bars under the box
      let y = b.y2 + 6;
      for (const [label, p] of Object.entries(face.emotion.smoothed_scores)) {
        ctx.fillStyle = "rgba(40,40,40,0.8)";
        ctx.fillRect(b.x1, y, 100, 6);
        ctx.fillStyle = colour;
        ctx.fillRect(b.x1, y, Math.round(100 * p), 6);
        ctx.fillStyle = "#fff";
        ctx.font = "10px system-ui, sans-serif";
        ctx.fillText(label.slice(0, 3), b.x1 + 104, y + 6);
        y += 9;
      }
      drawn.push({ track_id: face.track_id, box: b, colour, label: face.emotion.label, caption });
    });
    state.drawn = drawn;
  }
  requestAnimationFrame(draw);
}

function capture() {
  const w = video.videoWidth, h = video.videoHeight;
  // no frame before the server's hello: a size that changed mid-stream would move every box at once
  if (!w || !h || !ws || ws.readyState !== WebSocket.OPEN || inFlight > 0 || !state.analysisSize) return;
  const side = state.analysisSize, s = side && Math.max(w, h) > side ? side / Math.max(w, h) : 1;
  grab.width = Math.round(w * s); grab.height = Math.round(h * s);
  grabCtx.drawImage(video, 0, 0, grab.width, grab.height);
  inFlight += 1;
  grab.toBlob((blob) => {
    if (!blob || ws.readyState !== WebSocket.OPEN) { inFlight = Math.max(0, inFlight - 1); return; }
    const id = state.framesSent++;
    sentAt.set(id, performance.now());
    sentScale.set(id, s);
    ws.send(JSON.stringify({ type: "frame", id, ts: Date.now() / 1000 }));
    ws.send(blob);
  }, "image/jpeg", 0.8);
}

async function start() {
  $("smoothing").addEventListener("change", sendConfig);
  $("track").addEventListener("change", sendConfig);
  try {
    const media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    video.srcObject = media;
    await video.play();
  } catch (err) {
    setStatus(`no camera: ${err.name}`);
    state.cameraError = String(err);
    return;
  }
  connect();
  requestAnimationFrame(draw);
  setInterval(capture, 10);  // sends whenever the previous frame's result is back
}

start();
