// The live page: microphone -> AudioWorklet -> 16-bit PCM over WS /stream -> bars and
// timeline; and a file upload to POST /predict. No libraries, no inline script (the
// page is served with a strict Content-Security-Policy).
"use strict";

const COLOURS = {
  neutral: "#8d99ae", calm: "#5fa8d3", happy: "#f4a259", sad: "#3d5a80", angry: "#d62828",
  fear: "#7b2cbf", disgust: "#6a994e", ps: "#e9c46a", boredom: "#a5a58d",
};
const TIMELINE_CELLS = 120;
const $ = (id) => document.getElementById(id);

const state = { labels: [], stream: null, socket: null, context: null, media: null, windows: 0 };

function colour(label) { return COLOURS[label] || "#2f6fde"; }

function makeBars(container, labels) {
  container.replaceChildren();
  const rows = {};
  for (const label of labels) {
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = label;
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.background = colour(label);
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = "–";
    container.append(name, track, value);
    rows[label] = { name, fill, value };
  }
  container.rows = rows;
}

function showBars(container, probabilities) {
  const top = Object.keys(probabilities).reduce((a, b) => (probabilities[a] >= probabilities[b] ? a : b));
  for (const [label, row] of Object.entries(container.rows || {})) {
    const p = probabilities[label] || 0;
    row.fill.style.width = `${(100 * p).toFixed(1)}%`;
    row.value.textContent = p.toFixed(2);
    row.name.classList.toggle("top", label === top);
  }
}

function addCell(timeline, message) {
  const cell = document.createElement("div");
  const speech = message.type === "prediction";
  cell.className = `cell ${speech ? "speech" : "silence"}`;
  if (speech) {
    cell.style.background = colour(message.emotion);
    cell.dataset.emotion = message.emotion;
  }
  const what = speech ? `${message.emotion} ${(100 * message.confidence).toFixed(0)}%` : "no speech";
  cell.title = `${message.start.toFixed(1)}–${message.end.toFixed(1)} s: ${what} (${message.rms_db} dBFS)`;
  timeline.append(cell);
  while (timeline.childElementCount > TIMELINE_CELLS) timeline.firstElementChild.remove();
  timeline.scrollLeft = timeline.scrollWidth;
}

function setStatus(text) { $("status").textContent = text; }

function onStreamMessage(event) {
  const message = JSON.parse(event.data);
  if (message.type === "prediction") {
    state.windows += 1;
    document.body.dataset.predictions = String(state.windows);
    $("live-emotion").textContent = message.emotion;
    $("live-confidence").textContent = `${(100 * message.confidence).toFixed(0)}%`;
    showBars($("bars"), message.probabilities);
    addCell($("timeline"), message);
    setStatus(`listening · ${message.end.toFixed(1)} s`);
  } else if (message.type === "no_speech") {
    document.body.dataset.silences = String(Number(document.body.dataset.silences || 0) + 1);
    $("live-emotion").textContent = "no speech";
    $("live-confidence").textContent = "";
    addCell($("timeline"), message);
    setStatus(`listening · ${message.end.toFixed(1)} s · silence`);
  } else if (message.type === "error") {
    setStatus(`server: ${message.message}`);
  }
}

async function start() {
  $("start").disabled = true;
  try {
    state.media = await navigator.mediaDevices.getUserMedia({
      // Browser voice processing flattens a steady voice within seconds and distorts prosody.
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    state.context = new AudioContext({ sampleRate: state.stream.sample_rate });
    await state.context.audioWorklet.addModule("/static/pcm-worklet.js");
    const rate = state.context.sampleRate;
    const source = state.context.createMediaStreamSource(state.media);
    const capture = new AudioWorkletNode(state.context, "pcm-capture", {
      processorOptions: { blockSize: Math.round(rate / 10) },
    });
    const mute = state.context.createGain();
    mute.gain.value = 0;
    source.connect(capture).connect(mute).connect(state.context.destination);

    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${state.stream.url}`);
    socket.binaryType = "arraybuffer";
    state.socket = socket;
    socket.onmessage = onStreamMessage;
    socket.onclose = (event) => { if (state.socket === socket) stop(event.reason || "stream closed"); };
    socket.onopen = () => {
      socket.send(JSON.stringify({ type: "config", encoding: "pcm_s16le", sample_rate: rate }));
      setStatus("listening");
      $("stop").disabled = false;
    };
    capture.port.onmessage = (event) => {
      if (socket.readyState !== WebSocket.OPEN) return;
      const samples = event.data;
      const pcm = new Int16Array(samples.length);
      for (let i = 0; i < samples.length; i++) {
        const s = Math.max(-1, Math.min(1, samples[i]));
        pcm[i] = s < 0 ? s * 32768 : s * 32767;
      }
      socket.send(pcm.buffer);
    };
  } catch (error) {
    stop(`microphone unavailable: ${error.name || error}`);
  }
}

function stop(reason) {
  const socket = state.socket;
  state.socket = null;
  if (socket && socket.readyState === WebSocket.OPEN) socket.close(1000);
  if (state.media) state.media.getTracks().forEach((track) => track.stop());
  if (state.context) state.context.close();
  state.media = state.context = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  setStatus(typeof reason === "string" ? reason : "stopped");
}

async function upload(event) {
  event.preventDefault();
  const file = $("file").files[0];
  $("upload-error").hidden = true;
  if (!file) {
    $("upload-error").textContent = "choose an audio file first";
    $("upload-error").hidden = false;
    return;
  }
  const body = new FormData();
  body.append("file", file, file.name);
  const response = await fetch("/predict", { method: "POST", body });
  const result = await response.json();
  if (!response.ok) {
    $("upload-error").textContent = `${response.status}: ${result.detail}`;
    $("upload-error").hidden = false;
    $("upload-result").hidden = true;
    return;
  }
  $("upload-emotion").textContent = result.emotion;
  $("upload-detail").textContent =
    `${(100 * result.confidence).toFixed(0)}% · ${result.duration.toFixed(1)} s` +
    (result.windowed ? ` · ${result.timeline.length} windows` : "");
  showBars($("upload-bars"), result.probabilities);
  const timeline = $("upload-timeline");
  timeline.replaceChildren();
  for (const w of result.timeline || []) addCell(timeline, { type: "prediction", rms_db: "–", ...w });
  $("upload-result").hidden = false;
}

async function init() {
  const response = await fetch("/model");
  const info = await response.json();
  state.labels = info.labels;
  state.stream = info.stream;
  $("model").textContent =
    `model ${info.model_id} · ${info.model_type} · window ${info.stream.window_seconds} s every ${info.stream.hop_seconds} s`;
  makeBars($("bars"), info.labels);
  makeBars($("upload-bars"), info.labels);
  const legend = $("legend");
  for (const label of info.labels) {
    const item = document.createElement("span");
    item.textContent = label;
    item.style.setProperty("--swatch", colour(label));
    legend.append(item);
  }
  $("start").disabled = false;
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", () => stop("stopped"));
  $("upload-form").addEventListener("submit", upload);
  document.body.dataset.ready = "1";
}

init().catch((error) => setStatus(`cannot load the model card: ${error}`));
