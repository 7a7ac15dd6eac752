// musicsim web page: catalog search, neighbours, playback, file queries, playlists, embedding map.
// Plain browser JavaScript, no build step and no network access beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null, colours: new Map(), selected: null, morphFrom: null,
  catalog: { query: "", offset: 0, total: 0 }, queue: [], queueIndex: -1, playingId: null,
  map: null, mapPoints: [], highlighted: new Set(), playlistParams: null, playlistLabel: "",
  indexVersion: undefined, indexTracks: undefined,
};
const PAGE = 60;
// How often the page asks whether the server took in a new version of its index (ms).
const HEALTH_POLL_MS = 4000;

// ------------------------------------------------------------------ helpers
function showStatus(message, { error = false } = {}) {
  const box = $("status");
  box.textContent = message;
  box.classList.toggle("error", error);
  box.classList.add("show");
  clearTimeout(showStatus.timer);
  showStatus.timer = setTimeout(() => box.classList.remove("show"), error ? 6000 : 2500);
}

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function colourOf(group) {
  if (group === null || group === undefined) return "#8d96a8";
  if (!state.colours.has(group)) {
    // Golden-angle hues: neighbouring groups get clearly different colours.
    const hue = (state.colours.size * 137.508) % 360;
    state.colours.set(group, `hsl(${hue.toFixed(0)} 70% 62%)`);
  }
  return state.colours.get(group);
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

// "title — artist · album": how people know a track (the album falls back to the group server-side).
function byline(track) {
  return [track.artist, track.album].filter(Boolean).join(" · ");
}

function displayName(track) {
  const by = byline(track);
  return by ? `${track.title} — ${by}` : track.title;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// What a row shows under the name: year, genre, duration; for a track without tags, its group
// (when the name line does not already show it as the album).
function details(track) {
  const group = track.group !== null && track.group !== undefined && !track.artist
    && String(track.group) !== track.album ? track.group : null;
  return [group, track.year, track.genre, formatDuration(track.duration_s)]
    .filter((part) => part !== null && part !== undefined && part !== "");
}

// One list row: [rank or dot, cover] [title — artist · album / details] [score + play].
function trackRow(track, { rank = null, score = null, scoreRange = null, onChoose }) {
  const lead = element("span", { class: "lead" },
    rank !== null ? element("span", { class: "rank" }, String(rank))
      : element("span", { class: "dot", style: `background:${colourOf(track.group)}` }),
    track.art_url ? element("img", { class: "thumb", src: track.art_url, alt: "", loading: "lazy" }) : null);
  const sub = element("span", { class: "sub" },
    rank !== null ? element("span", { class: "dot", style: `background:${colourOf(track.group)}` }) : null,
    element("span", {}, details(track).join(" · ") || "—"));
  const by = byline(track);
  const name = element("div", { class: "title", title: track.relative_path || track.track_id }, track.title,
    by ? element("span", { class: "by" }, ` — ${by}`) : null);
  const text = element("div", { class: "text" }, name, sub);
  const tail = element("div", { class: "score" });
  if (score !== null) {
    const [low, high] = scoreRange;
    const share = high > low ? (score - low) / (high - low) : 1;
    tail.append(element("span", { class: "bar" }, element("span", { style: `width:${(15 + 85 * share).toFixed(0)}%` })),
      element("span", {}, score.toFixed(3)));
  }
  const play = element("button", { class: "play", type: "button", tabindex: "-1", title: `Play ${displayName(track)}`,
    "aria-label": `Play ${displayName(track)}` }, "▶");
  play.disabled = !track.audio_url;
  play.addEventListener("click", (event) => { event.stopPropagation(); playTrack(track); });
  tail.append(play);
  const row = element("li", { role: "option", "aria-selected": "false", dataset: { id: track.track_id } }, lead, text, tail);
  row.addEventListener("click", () => onChoose(track, row));
  row.track = track;
  if (track.track_id === state.playingId) row.classList.add("playing");
  return row;
}

function scoreRangeOf(results) {
  const scores = results.map((r) => r.score);
  return [Math.min(...scores), Math.max(...scores)];
}

// Arrow keys move through a list's rows, Enter chooses, Space plays.
function keyboardList(list) {
  list.addEventListener("keydown", (event) => {
    const rows = [...list.querySelectorAll("li[role=option]")];
    if (!rows.length) return;
    let at = rows.findIndex((row) => row.classList.contains("active"));
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      at = event.key === "ArrowDown" ? Math.min(rows.length - 1, at + 1) : Math.max(0, at - 1);
      rows.forEach((row) => row.classList.remove("active"));
      rows[at].classList.add("active");
      rows[at].scrollIntoView({ block: "nearest" });
      list.setAttribute("aria-activedescendant", rows[at].id || "");
    } else if (event.key === "Enter" && at >= 0) {
      event.preventDefault();
      rows[at].click();
    } else if (event.key === " " && at >= 0) {
      event.preventDefault();
      if (rows[at].track) playTrack(rows[at].track);
    }
  });
}

function markPlaying() {
  document.querySelectorAll(".tracks li").forEach((row) => {
    row.classList.toggle("playing", row.dataset.id === state.playingId);
  });
}

// ------------------------------------------------------------------ catalog
async function searchCatalog(query, { append = false } = {}) {
  const offset = append ? state.catalog.offset + PAGE : 0;
  const params = new URLSearchParams({ q: query, limit: PAGE, offset });
  try {
    const page = await api(`/api/tracks?${params}`);
    state.catalog = { query, offset, total: page.total };
    const list = $("track-list");
    if (!append) list.replaceChildren();
    for (const track of page.tracks) list.append(trackRow(track, { onChoose: (t) => selectTrack(t) }));
    if (!page.total) list.append(element("li", { class: "empty" }, `No track matches “${query}”.`));
    $("catalog-count").textContent = query ? `${page.total} match${page.total === 1 ? "" : "es"}` : `${page.total} tracks`;
    $("more-tracks").hidden = offset + PAGE >= page.total;
  } catch (error) {
    showStatus(error.message, { error: true });
  }
}

// ------------------------------------------------------------------ selection and neighbours
function neighbourOptions() {
  const k = Math.max(1, Math.min(100, parseInt($("k").value, 10) || 10));
  return { k, diversity: $("diversity").value, exclude_same_group: $("exclude-group").checked };
}

function showNow(track) {
  $("now-title").textContent = track.title;
  $("now-title").title = displayName(track);
  const year = track.year ? ` (${track.year})` : "";
  $("now-byline").textContent = byline(track) + (byline(track) ? year : "");
  $("now-sub").textContent = [track.genre, track.relative_path || track.file, formatDuration(track.duration_s)]
    .filter(Boolean).join(" · ");
  const art = $("now-art");
  if (track.art_url) {
    art.src = track.art_url;
    art.alt = `Cover of ${track.album || track.title}`;
    art.hidden = false;
  } else {
    art.hidden = true;
    art.removeAttribute("src");
  }
}

async function selectTrack(track) {
  state.selected = track;
  showNow(track);
  for (const id of ["play-selected", "radio-selected", "morph-from"]) $(id).disabled = false;
  $("play-selected").disabled = !track.audio_url;
  $("morph-to").disabled = !state.morphFrom || state.morphFrom.track_id === track.track_id;
  document.querySelectorAll("#track-list li").forEach((row) => {
    const chosen = row.dataset.id === track.track_id;
    row.classList.toggle("selected", chosen);
    row.setAttribute("aria-selected", String(chosen));
  });
  const player = $("player");
  if (track.audio_url && state.playingId === null && player.paused) {
    player.src = track.audio_url;  // ready to play; nothing starts until asked
  }
  await loadNeighbours();
}

async function loadNeighbours() {
  const track = state.selected;
  if (!track) return;
  const { k, diversity, exclude_same_group } = neighbourOptions();
  const params = new URLSearchParams({ k, diversity, exclude_same_group });
  try {
    const answer = await api(`/api/similar/${encodeURIComponent(track.track_id)}?${params}`);
    $("neighbours-title").textContent = `Similar to “${track.title}”`;
    renderNeighbours(answer.results);
  } catch (error) {
    showStatus(error.message, { error: true });
  }
}

function renderNeighbours(results) {
  const list = $("neighbour-list");
  list.replaceChildren();
  if (!results.length) list.append(element("li", { class: "empty" }, "No neighbours."));
  const range = results.length ? scoreRangeOf(results) : [0, 1];
  for (const result of results) {
    list.append(trackRow(result, { rank: result.rank, score: result.score, scoreRange: range,
      onChoose: (t) => selectTrack(t) }));
  }
  state.highlighted = new Set(results.map((r) => r.track_id));
  drawMap();
}

// ------------------------------------------------------------------ playback and playlists
function playTrack(track, { queueIndex = -1 } = {}) {
  if (!track.audio_url) { showStatus(`No audio for ${track.title}`, { error: true }); return; }
  const player = $("player");
  state.playingId = track.track_id;
  state.queueIndex = queueIndex;
  player.src = track.audio_url;
  player.play().catch((error) => showStatus(`Cannot play ${track.title}: ${error.message}`, { error: true }));
  document.title = `♪ ${displayName(track)} — musicsim`;
  if (!state.selected || queueIndex >= 0) showNow(track);
  markPlaying();
}

async function buildPlaylist(params, label) {
  try {
    const answer = await api(`/api/playlist?${new URLSearchParams(params)}`);
    state.queue = answer.tracks;
    const list = $("playlist");
    list.replaceChildren();
    answer.tracks.forEach((track, i) => {
      list.append(trackRow(track, { rank: i + 1, onChoose: () => playTrack(track, { queueIndex: i }) }));
    });
    $("playlist-kind").textContent = label;
    $("play-all").disabled = !answer.tracks.length;
    state.playlistParams = params;
    state.playlistLabel = label;
    $("save-playlist").disabled = !answer.tracks.length;
    showStatus(`${label}: ${answer.tracks.length} tracks`);
  } catch (error) {
    showStatus(error.message, { error: true });
  }
}

// The playlist as an M3U file for a player: the same request, as format=m3u8, downloaded.
function savePlaylist() {
  if (!state.playlistParams) return;
  const link = element("a", { href: `/api/playlist?${new URLSearchParams({ ...state.playlistParams, format: "m3u8" })}`,
    download: "" });
  document.body.append(link);
  link.click();
  link.remove();
  showStatus(`Saving ${state.playlistLabel} as an M3U playlist`);
}

function playlistLength() {
  return Math.max(2, Math.min(100, parseInt($("playlist-n").value, 10) || 15));
}

// ------------------------------------------------------------------ file queries
async function queryFile(file) {
  if (!file) return;
  if (state.info && file.size > state.info.max_upload_mb * 1024 * 1024) {
    showStatus(`${file.name} is larger than the ${state.info.max_upload_mb} MiB upload limit`, { error: true });
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  const { k, diversity } = neighbourOptions();
  showStatus(`Listening to ${file.name}…`);
  try {
    const answer = await api(`/api/similar?${new URLSearchParams({ k, diversity })}`, { method: "POST", body: form });
    $("neighbours-title").textContent = `Similar to the file “${file.name}”`;
    renderNeighbours(answer.results);
    showStatus(`${answer.results.length} neighbours of ${file.name}`);
  } catch (error) {
    showStatus(error.message, { error: true });
  }
}

// ------------------------------------------------------------------ embedding map
async function loadMap() {
  try {
    const answer = await api("/api/map");
    state.map = answer;
    $("map-method").textContent = `${answer.method.toUpperCase()} of ${answer.track_ids.length} tracks`;
    const legend = $("legend");
    legend.replaceChildren();
    const groups = state.info ? state.info.groups : [...new Set(answer.groups)];
    for (const group of groups.slice(0, 40)) {
      legend.append(element("li", {}, element("span", { class: "dot", style: `background:${colourOf(group)}` }), group));
    }
    drawMap();
  } catch (error) {
    showStatus(`map: ${error.message}`, { error: true });
  }
}

function viewRange(values) {
  if (!viewRange.cache) viewRange.cache = new WeakMap();
  if (viewRange.cache.has(values)) return viewRange.cache.get(values);
  const sorted = Float64Array.from(values).sort();
  const at = (share) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(share * (sorted.length - 1))))];
  let low = at(0.02), high = at(0.98);
  const margin = (high - low) * 0.06 || 1;
  const range = [low - margin, high + margin];
  viewRange.cache.set(values, range);
  return range;
}

function drawMap() {
  const canvas = $("map");
  const map = state.map;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  if (!map) return;
  const pad = 14;
  const count = map.x.length;
  const radius = count > 20000 ? 1.2 : count > 2000 ? 2 : 4;
  // The view spans the central 96% of each axis (a few outliers would squeeze the rest into a corner);
  // points beyond it sit on the edge.
  const [x0, x1] = viewRange(map.x), [y0, y1] = viewRange(map.y);
  const place = (value, low, high, size) => pad + Math.min(1, Math.max(0, (value - low) / (high - low))) * (size - 2 * pad);
  state.mapPoints = new Array(count);
  for (let i = 0; i < count; i++) {
    const x = place(map.x[i], x0, x1, width);
    const y = height - place(map.y[i], y0, y1, height);
    state.mapPoints[i] = [x, y];
    context.fillStyle = colourOf(map.groups[i]);
    context.globalAlpha = state.highlighted.size && !state.highlighted.has(map.track_ids[i]) ? 0.6 : 0.95;
    context.beginPath();
    context.arc(x, y, radius, 0, 2 * Math.PI);
    context.fill();
  }
  context.globalAlpha = 1;
  const ring = (i, colour, size) => {
    const [x, y] = state.mapPoints[i];
    context.strokeStyle = colour;
    context.lineWidth = 2;
    context.beginPath();
    context.arc(x, y, size, 0, 2 * Math.PI);
    context.stroke();
  };
  const rowOf = (id) => map.track_ids.indexOf(id);
  if (state.selected) {
    const at = rowOf(state.selected.track_id);
    if (at >= 0) {
      for (const id of state.highlighted) {
        const j = rowOf(id);
        if (j < 0) continue;
        context.strokeStyle = "#ffffff30";
        context.lineWidth = 1;
        context.beginPath();
        context.moveTo(...state.mapPoints[at]);
        context.lineTo(...state.mapPoints[j]);
        context.stroke();
      }
      ring(at, "#ffffff", radius + 5);
    }
  }
  if (state.playingId) {
    const at = rowOf(state.playingId);
    if (at >= 0) ring(at, "#ffb454", radius + 8);
  }
}

function nearestPoint(event) {
  const canvas = $("map");
  const box = canvas.getBoundingClientRect();
  const x = event.clientX - box.left, y = event.clientY - box.top;
  let best = -1, bestDistance = 10 * 10;
  state.mapPoints.forEach(([px, py], i) => {
    const d = (px - x) ** 2 + (py - y) ** 2;
    if (d < bestDistance) { bestDistance = d; best = i; }
  });
  return { index: best, x, y };
}

function setupMap() {
  const canvas = $("map"), tip = $("map-tip");
  canvas.addEventListener("mousemove", (event) => {
    const { index, x, y } = nearestPoint(event);
    if (index < 0 || !state.map) { tip.hidden = true; return; }
    tip.textContent = [state.map.titles[index], state.map.groups[index]].filter((p) => p !== null && p !== undefined).join(" — ");
    tip.style.left = `${Math.min(x + 12, canvas.clientWidth - 180)}px`;
    tip.style.top = `${y + 12}px`;
    tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", async (event) => {
    const { index } = nearestPoint(event);
    if (index < 0) return;
    try {
      const track = (await api(`/api/similar/${encodeURIComponent(state.map.track_ids[index])}?k=1`)).query;
      selectTrack(track);
    } catch (error) {
      showStatus(error.message, { error: true });
    }
  });
  new ResizeObserver(() => drawMap()).observe(canvas);
}

// ------------------------------------------------------------------ wiring
function setup() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchCatalog($("search-input").value.trim());
  });
  let typing;
  $("search-input").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => searchCatalog($("search-input").value.trim()), 250);
  });
  $("search-input").addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") { event.preventDefault(); $("track-list").focus(); }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement.tagName !== "INPUT") {
      event.preventDefault();
      $("search-input").focus();
    }
  });
  $("more-tracks").addEventListener("click", () => searchCatalog(state.catalog.query, { append: true }));
  for (const list of ["track-list", "neighbour-list", "playlist"]) keyboardList($(list));

  $("play-selected").addEventListener("click", () => state.selected && playTrack(state.selected));
  $("radio-selected").addEventListener("click", () => {
    if (!state.selected) return;
    buildPlaylist({ seed: state.selected.track_id, n: playlistLength(), diversity: $("diversity").value },
      `Radio from “${state.selected.title}”`);
  });
  $("morph-from").addEventListener("click", () => {
    state.morphFrom = state.selected;
    showStatus(`Morph starts at “${state.selected.title}”: pick another track, then “Morph to”`);
    $("morph-to").disabled = true;
  });
  $("morph-to").addEventListener("click", () => {
    if (!state.morphFrom || !state.selected) return;
    buildPlaylist({ from: state.morphFrom.track_id, to: state.selected.track_id, n: playlistLength() },
      `Morph “${state.morphFrom.title}” → “${state.selected.title}”`);
  });
  $("play-all").addEventListener("click", () => state.queue.length && playTrack(state.queue[0], { queueIndex: 0 }));
  $("save-playlist").addEventListener("click", savePlaylist);
  $("player").addEventListener("ended", () => {
    const next = state.queueIndex + 1;
    if (state.queueIndex >= 0 && next < state.queue.length) playTrack(state.queue[next], { queueIndex: next });
  });
  $("player").addEventListener("play", () => drawMap());

  $("diversity").addEventListener("input", () => { $("diversity-value").textContent = $("diversity").value; });
  for (const id of ["k", "diversity", "exclude-group"]) $(id).addEventListener("change", loadNeighbours);

  const drop = $("drop-zone");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const item = event.dataTransfer.items && event.dataTransfer.items[0];
    const entry = item && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    if (entry && entry.isDirectory) {
      showStatus(`“${entry.name}” is a folder: drop one audio file`, { error: true });
      return;
    }
    queryFile(event.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file-input").click(); }
  });
  $("file-input").addEventListener("change", () => { queryFile($("file-input").files[0]); $("file-input").value = ""; });
  setupMap();
}

async function loadInfo() {
  state.info = await api("/api/info");
  state.info.groups.forEach(colourOf);
  state.indexVersion = state.info.version;
  state.indexTracks = state.info.tracks;
  $("index-summary").textContent = `${state.info.tracks} tracks · ${state.info.model ?? "unknown model"} · `
    + `${state.info.similarity}`;
  $("upload-limit").textContent = state.info.file_queries
    ? `(up to ${state.info.max_upload_mb} MiB)` : "(this index has no model: file queries are off)";
}

// The server follows its index (a scan, an add or a remove): when it serves a new version, the
// catalog, its count and the map are drawn again.
async function followIndex() {
  try {
    const health = await api("/healthz");
    if (health.index_version !== state.indexVersion || health.tracks !== state.indexTracks) {
      await loadInfo();
      await searchCatalog(state.catalog.query);
      loadMap();
      showStatus(`The index was updated: ${state.info.tracks} tracks`);
    }
  } catch (error) {
    // The server may be restarting; the next look tries again.
  }
  setTimeout(followIndex, HEALTH_POLL_MS);
}

async function start() {
  setup();
  try {
    await loadInfo();
  } catch (error) {
    showStatus(`cannot reach the server: ${error.message}`, { error: true });
  }
  await searchCatalog("");
  loadMap();
  setTimeout(followIndex, HEALTH_POLL_MS);
}

start();
