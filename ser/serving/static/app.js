// The live page: microphone -> AudioWorklet -> 16-bit PCM over WS /stream -> bars, the
// utterance summary and the timeline; and a file upload to POST /predict. No libraries,
// no inline script (the page is served with a strict Content-Security-Policy). When the
// server answers 401 the page asks for an API key and keeps it in this script's memory
// only (never in storage, cookies or the page), for its requests and the stream.
"use strict";

const COLOURS = {
  neutral: "#8d99ae", calm: "#5fa8d3", happy: "#f4a259", sad: "#3d5a80", angry: "#d62828",
  fear: "#7b2cbf", disgust: "#6a994e", ps: "#e9c46a", boredom: "#a5a58d",
};
// What each label is called on the page; the label itself is the tooltip.
const NAMES = {
  neutral: "neutral", calm: "calm", happy: "happy", sad: "sad", angry: "angry",
  fear: "fear", disgust: "disgust", ps: "pleasant surprise", boredom: "boredom",
};
const TIMELINE_CELLS = 120;
// This much stream time without a speech window ends an utterance: the summary then
// shows it as the last utterance, and the next speech window starts a new one.
const UTTERANCE_GAP_SECONDS = 3;
// Time-axis ticks: the smallest step that leaves at least this many cells between labels.
const TICK_STEPS = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300];
const CELLS_PER_TICK = 3;
const $ = (id) => document.getElementById(id);

const state = { labels: [], stream: null, socket: null, context: null, media: null, key: null };

function colour(label) { return COLOURS[label] || "#2f6fde"; }

function emotionName(label) { return NAMES[label] || label; }

/** Show an emotion by its full name, with the model's short label as the tooltip. */
function showEmotion(element, label) {
  element.textContent = emotionName(label);
  element.title = label;
}

/** Show a text that is not an emotion (no speech, a dash), with no tooltip. */
function showNotEmotion(element, text) {
  element.textContent = text;
  element.removeAttribute("title");
}

function percent(p) { return `${(100 * p).toFixed(0)}%`; }

function makeBars(container, labels) {
  container.replaceChildren();
  const rows = {};
  for (const label of labels) {
    const name = document.createElement("span");
    name.className = "bar-label";
    showEmotion(name, label);
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

function topLabel(probabilities) {
  return Object.keys(probabilities).reduce((a, b) => (probabilities[a] >= probabilities[b] ? a : b));
}

function showBars(container, probabilities) {
  const top = topLabel(probabilities);
  container.classList.remove("stale");
  for (const [label, row] of Object.entries(container.rows || {})) {
    const p = probabilities[label] || 0;
    row.fill.style.width = `${(100 * p).toFixed(1)}%`;
    row.value.textContent = p.toFixed(2);
    row.name.classList.toggle("top", label === top);
  }
}

/** Grey the bars: they show an older window than the one just heard. */
function greyBars(container) {
  container.classList.add("stale");
  for (const row of Object.values(container.rows || {})) row.name.classList.remove("top");
}

/** Empty the bars: nothing to show yet. */
function clearBars(container) {
  container.classList.remove("stale");
  for (const row of Object.values(container.rows || {})) {
    row.fill.style.width = "0";
    row.value.textContent = "–";
    row.name.classList.remove("top");
  }
}

function tickStep(hop) {
  return TICK_STEPS.find((step) => step >= CELLS_PER_TICK * hop - 1e-9) || TICK_STEPS.at(-1);
}

/** The axis label of a cell starting at ``start``: the tick in [start, start + hop), if any. */
function tickIn(start, hop) {
  const step = tickStep(hop);
  const tick = Math.ceil(start / step - 1e-6) * step;
  return tick < start + hop - 1e-6 ? `${Number(tick.toFixed(1))} s` : null;
}

function addCell(timeline, message, hop) {
  const cell = document.createElement("div");
  const speech = message.type === "prediction";
  cell.className = `cell ${speech ? "speech" : "silence"}`;
  if (speech) {
    cell.style.background = colour(message.emotion);
    cell.dataset.emotion = message.emotion;
  }
  const tick = tickIn(message.start, hop);
  if (tick) cell.dataset.tick = tick;
  const what = speech ? `${emotionName(message.emotion)} ${percent(message.confidence)}` : "no speech";
  const level = message.rms_db === undefined ? "" : ` (${message.rms_db} dBFS)`;
  cell.title = `${message.start.toFixed(1)}–${message.end.toFixed(1)} s: ${what}${level}`;
  timeline.append(cell);
  while (timeline.childElementCount > TIMELINE_CELLS) timeline.firstElementChild.remove();
  timeline.scrollLeft = timeline.scrollWidth;
}

function setStatus(text) { $("status").textContent = text; }

function count(name) {
  document.body.dataset[name] = String(Number(document.body.dataset[name] || 0) + 1);
}

// ------------------------------------------------------------------ utterance summary

/** Add a speech window to the current utterance, or start one after a pause. */
function addToUtterance(message) {
  let utterance = state.utterance;
  if (!utterance || utterance.ended) {
    utterance = state.utterance = { sums: {}, windows: 0, start: message.start, end: message.end };
  }
  for (const [label, p] of Object.entries(message.probabilities)) {
    utterance.sums[label] = (utterance.sums[label] || 0) + p;
  }
  utterance.windows += 1;
  utterance.end = message.end;
  showSummary();
}

/** A silent window: the utterance ends once the pause is long enough. */
function notePause(message) {
  const utterance = state.utterance;
  if (utterance && !utterance.ended && message.end - utterance.end >= UTTERANCE_GAP_SECONDS) {
    utterance.ended = true;
    showSummary();
  }
}

/** The mean distribution over the utterance's speech windows. */
function utteranceMean(utterance) {
  const mean = {};
  for (const [label, sum] of Object.entries(utterance.sums)) mean[label] = sum / utterance.windows;
  return mean;
}

function showSummary() {
  const utterance = state.utterance;
  document.body.dataset.utterance = utterance ? (utterance.ended ? "ended" : "open") : "none";
  if (!utterance) {
    $("summary-title").textContent = "This utterance";
    showNotEmotion($("summary-emotion"), "–");
    $("summary-detail").textContent = "no speech yet";
    clearBars($("summary-bars"));
    return;
  }
  const mean = utteranceMean(utterance);
  const top = topLabel(mean);
  const windows = `${utterance.windows} speech window${utterance.windows === 1 ? "" : "s"}`;
  $("summary-title").textContent = utterance.ended ? "Last utterance" : "This utterance";
  showEmotion($("summary-emotion"), top);
  $("summary-detail").textContent =
    `${percent(mean[top])} on average over ${windows}, ` +
    `${utterance.start.toFixed(1)}–${utterance.end.toFixed(1)} s`;
  showBars($("summary-bars"), mean);
}

// ------------------------------------------------------------------ API key

function authHeaders() { return state.key ? { Authorization: `Bearer ${state.key}` } : {}; }

/** Show the key form with ``message``; resolves once a key has been entered. */
function askForKey(message) {
  $("key").hidden = false;
  $("key-status").textContent = message;
  $("key-input").focus();
  document.body.dataset.key = "asked";
  return new Promise((resolve) => { state.keyEntered = resolve; });
}

function useKey(event) {
  event.preventDefault();
  const input = $("key-input");
  state.key = input.value.trim();
  input.value = "";  // out of the page: the key lives in ``state`` alone
  $("key").hidden = true;
  document.body.dataset.key = "entered";
  if (state.keyEntered) state.keyEntered();
}

/** ``fetch`` with the API key; on 401 the page asks for a key and tries again. */
async function apiFetch(url, options = {}) {
  for (;;) {
    const response = await fetch(url, { ...options, headers: authHeaders() });
    if (response.status !== 401) return response;
    await askForKey(state.key ? "the server refused that key; enter another" : "this server needs an API key");
  }
}

// ------------------------------------------------------------------ live stream

function onStreamMessage(event) {
  const message = JSON.parse(event.data);
  const hop = state.stream.hop_seconds;
  document.body.dataset.latest = message.type;
  if (message.type === "prediction") {
    count("predictions");
    showEmotion($("live-emotion"), message.emotion);
    $("live-confidence").textContent = percent(message.confidence);
    $("bars-caption").textContent = `latest window, ${message.start.toFixed(1)}–${message.end.toFixed(1)} s`;
    showBars($("bars"), message.probabilities);
    addToUtterance(message);
    addCell($("timeline"), message, hop);
    setStatus(`listening · ${message.end.toFixed(1)} s`);
  } else if (message.type === "no_speech") {
    count("silences");
    showNotEmotion($("live-emotion"), "no speech");
    $("live-confidence").textContent = "";
    if (state.utterance) {
      $("bars-caption").textContent = "last speech window (greyed: no speech now)";
      greyBars($("bars"));
    }
    notePause(message);
    addCell($("timeline"), message, hop);
    setStatus(`listening · ${message.end.toFixed(1)} s · silence`);
  } else if (message.type === "error") {
    setStatus(`server: ${message.message}`);
  }
}

/** A new recording starts with an empty timeline, bars and summary. */
function resetLive() {
  state.utterance = null;
  delete document.body.dataset.predictions;
  delete document.body.dataset.silences;
  delete document.body.dataset.latest;
  $("timeline").replaceChildren();
  clearBars($("bars"));
  $("bars-caption").textContent = "latest window";
  showNotEmotion($("live-emotion"), "–");
  $("live-confidence").textContent = "";
  showSummary();
}

async function start() {
  $("start").disabled = true;
  resetLive();
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
      // Browsers cannot set headers on a WebSocket: the key is the first message.
      if (state.key) socket.send(JSON.stringify({ type: "auth", key: state.key }));
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

// ------------------------------------------------------------------ upload

function showUploadError(text) {
  $("upload-error").textContent = text;
  $("upload-error").hidden = false;
  $("upload-result").hidden = true;
}

/** The button and status while an upload is in flight (the last result stays, dimmed). */
function setPredicting(file) {
  const button = $("upload-button");
  button.disabled = Boolean(file);
  button.textContent = file ? "Predicting…" : "Predict";
  $("upload-status").textContent = file ? `predicting ${file.name}…` : "";
  $("upload-result").classList.toggle("busy", Boolean(file));
  document.body.dataset.uploading = file ? "1" : "0";
}

/** The hop between a clip's windows (its window length when it has only one). */
function timelineHop(timeline) {
  if (timeline.length > 1) return timeline[1].start - timeline[0].start;
  return timeline.length ? timeline[0].end - timeline[0].start : 1;
}

/** A ``/predict`` answer: a prediction, or ``type: "no_speech"`` for a clip without speech
 * (an answer without ``type`` is a prediction). */
function showUploadResult(result) {
  const duration = typeof result.duration === "number" ? `${result.duration.toFixed(1)} s` : "";
  const timeline = result.timeline || [];
  if (result.type === "no_speech") {
    showNotEmotion($("upload-emotion"), "no speech detected");
    $("upload-detail").textContent = duration;
    clearBars($("upload-bars"));
  } else {
    showEmotion($("upload-emotion"), result.emotion);
    $("upload-detail").textContent =
      [percent(result.confidence), duration, result.windowed ? `${timeline.length} windows` : ""]
        .filter(Boolean).join(" · ");
    showBars($("upload-bars"), result.probabilities);
  }
  const cells = $("upload-timeline");
  cells.replaceChildren();
  const hop = timelineHop(timeline);
  for (const w of timeline) addCell(cells, { type: w.emotion ? "prediction" : "no_speech", ...w }, hop);
  $("upload-result").hidden = false;
}

async function upload(event) {
  event.preventDefault();
  const file = $("file").files[0];
  $("upload-error").hidden = true;
  if (!file) {
    showUploadError("choose an audio file first");
    return;
  }
  const body = new FormData();
  body.append("file", file, file.name);
  setPredicting(file);
  try {
    const response = await apiFetch("/predict", { method: "POST", body });
    const result = await response.json().catch(() => ({ detail: response.statusText }));
    if (response.ok) showUploadResult(result);
    else showUploadError(`${response.status}: ${result.detail}`);
  } catch (error) {
    showUploadError(`${file.name}: the server could not be reached (${error.message || error})`);
  } finally {
    setPredicting(null);
  }
}

// ------------------------------------------------------------------ start-up

function makeLegend(labels) {
  const legend = $("legend");
  for (const label of labels) {
    const item = document.createElement("span");
    showEmotion(item, label);
    item.style.setProperty("--swatch", colour(label));
    legend.append(item);
  }
}

async function init() {
  $("key-form").addEventListener("submit", useKey);
  const response = await apiFetch("/model");
  const info = await response.json();
  state.labels = info.labels;
  state.stream = info.stream;
  $("model").textContent =
    `model ${info.model_id} · ${info.model_type} · window ${info.stream.window_seconds} s every ${info.stream.hop_seconds} s`;
  makeBars($("bars"), info.labels);
  makeBars($("summary-bars"), info.labels);
  makeBars($("upload-bars"), info.labels);
  makeLegend(info.labels);
  showSummary();
  $("start").disabled = false;
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", () => stop("stopped"));
  $("upload-form").addEventListener("submit", upload);
  document.body.dataset.ready = "1";
}

init().catch((error) => setStatus(`cannot load the model card: ${error}`));
