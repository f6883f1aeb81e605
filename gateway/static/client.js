// A minimal xRx client: the same wire protocol as the xRx React client.
"use strict";

const RATE = 16000; // what the gateway takes and the TTS service sends
const $ = (id) => document.getElementById(id);
let ws = null;
let audio = null; // one AudioContext for capture and playback, so echo cancellation sees both
let playing = [];
let playAt = 0;
let audioBytes = 0;
let micStream = null;

function show(user, type, content) {
  const div = document.createElement("div");
  div.className = "msg";
  div.dataset.user = user;
  div.dataset.type = type;
  if (type === "widget") showWidget(div, content);
  else div.textContent = content;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
}

// Widget buttons send xRx actions, parameters JSON-encoded as the xRx React client does.
function addButtons(div, details) {
  const actions = (details && details.actions) || [];
  for (const action of actions) {
    const button = document.createElement("button");
    button.className = "widget-action";
    button.textContent = action.label || action.tool;
    button.onclick = () => {
      if (!ws) return;
      ws.send(JSON.stringify({
        type: "action",
        content: { tool: action.tool, parameters: JSON.stringify(action.parameters || {}) },
        modality: $("speak-replies").checked ? "audio" : "text",
      }));
    };
    div.appendChild(button);
  }
}

// The xRx widget convention: content is the agent's object {type, details: "<JSON string>",
// "available-tools"}. Anything else (another agent's string, say) is shown as it came.
function showWidget(div, content) {
  let details = null;
  const isWidget = content && typeof content === "object" && typeof content.type === "string";
  if (isWidget) {
    try { details = JSON.parse(content.details); } catch { /* shown raw below */ }
  }
  const box = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = isWidget ? content.type : "widget";
  const pre = document.createElement("pre");
  pre.textContent = details ? JSON.stringify(details, null, 2)
    : (typeof content === "string" ? content : JSON.stringify(content, null, 2));
  box.append(summary, pre);
  div.appendChild(box);
  addButtons(div, details);
}

function ensureAudio() {
  if (!audio) audio = new AudioContext({ sampleRate: RATE });
  if (audio.state === "suspended") audio.resume();
  return audio;
}

function play(buffer) {
  audioBytes += buffer.byteLength;
  $("audio-bytes").textContent = String(audioBytes);
  const ctx = ensureAudio();
  const pcm = new Int16Array(buffer);
  const samples = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  const clip = ctx.createBuffer(1, samples.length, RATE);
  clip.copyToChannel(samples, 0);
  const source = ctx.createBufferSource();
  source.buffer = clip;
  source.connect(ctx.destination);
  playAt = Math.max(playAt, ctx.currentTime);
  source.start(playAt);
  playAt += clip.duration;
  playing.push(source);
  source.onended = () => { playing = playing.filter((s) => s !== source); };
}

function clearAudio() {
  for (const source of playing) { try { source.stop(); } catch { /* already ended */ } }
  playing = [];
  playAt = 0;
}

function onMessage(event) {
  if (event.data instanceof ArrayBuffer) { play(event.data); return; }
  const msg = JSON.parse(event.data);
  if (msg.type === "action") {
    if (msg.content === "agent_started_thinking") $("thinking").hidden = false;
    if (msg.content === "agent_ended_thinking") $("thinking").hidden = true;
    if (msg.content === "clear_audio_buffer") clearAudio();
  }
  show(msg.user, msg.type, msg.content);
}

function setConnected(connected) {
  $("status").textContent = connected ? "connected" : "disconnected";
  $("status").dataset.state = connected ? "connected" : "disconnected";
  for (const id of ["mic", "text", "send"]) $(id).disabled = !connected;
  $("connect").textContent = connected ? "Disconnect" : "Connect";
}

function connect() {
  if (ws) { ws.close(); return; }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // Browsers cannot set headers on a WebSocket: the key travels in the URL.
  const key = encodeURIComponent($("api-key").value);
  ws = new WebSocket(`${scheme}://${location.host}/api/v1/ws?api_key=${key}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => setConnected(true);
  ws.onmessage = onMessage;
  ws.onclose = (event) => {
    setConnected(false);
    stopMic();
    ws = null;
    if (event.code !== 1000 && event.code !== 1005) show("system", "error", `connection closed (${event.code}) ${event.reason}`);
  };
  ws.onerror = () => show("system", "error", "connection failed: is the gateway up, and the API key right?");
}

async function startMic() {
  const ctx = ensureAudio();
  await ctx.audioWorklet.addModule("capture-worklet.js");
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const node = new AudioWorkletNode(ctx, "capture");
  node.port.onmessage = (event) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const block = event.data;
    const pcm = new Int16Array(block.length);
    for (let i = 0; i < block.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(block[i] * 32767)));
    ws.send(pcm.buffer);
  };
  ctx.createMediaStreamSource(micStream).connect(node);
  $("mic").textContent = "Stop microphone";
  $("mic").dataset.on = "true";
}

function stopMic() {
  if (micStream) micStream.getTracks().forEach((t) => t.stop());
  micStream = null;
  $("mic").textContent = "Start microphone";
  delete $("mic").dataset.on;
}

$("connect").onclick = connect;
$("mic").onclick = () => ($("mic").dataset.on ? stopMic() : startMic().catch((e) => show("system", "error", `microphone: ${e.message}`)));
$("compose").onsubmit = (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !ws) return;
  ensureAudio();
  const modality = $("speak-replies").checked ? "audio" : "text";
  ws.send(JSON.stringify({ type: "text", content: text, modality }));
  show("user", "text", text);
  $("text").value = "";
};
const fromUrl = new URLSearchParams(location.search).get("api_key");
if (fromUrl) $("api-key").value = fromUrl;
