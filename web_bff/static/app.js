// ocrmesh web UI: log in / register, upload (picker, drag and drop, paste), results, registry console.
"use strict";

const $ = (id) => document.getElementById(id);
const t = (key, vars) => window.i18n.t(key, vars);
const RETRYABLE = new Set(["busy", "unavailable", "timeout", "network"]);
const STATUS_EVERY_MS = 3000;

const state = {
  user: null,
  maxUploadBytes: 10 * 1024 * 1024, // replaced by the server's limit (GET /api/config)
  pending: null, // a file chosen while logged out, recognised right after login
  file: null,
  result: null,
  objectUrl: null,
  authMode: "login",
  notice: null,
  error: null,
  statusTimer: null,
  busyTimer: null,
};

// ---------- API ----------

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.error) || (status === 0 ? "network" : "other");
    this.detail = (body && body.message) || "";
    this.fields = (body && body.fields) || {};
    this.retryAfter = Number(retryAfter) || 1;
  }
}

function csrf() {
  const found = document.cookie.match(/(?:^|;\s*)ocrmesh_csrf=([^;]+)/);
  return found ? decodeURIComponent(found[1]) : "";
}

async function ensureCsrf() {
  if (!csrf()) await fetch("/api/csrf", { credentials: "same-origin" }).catch(() => null);
}

async function api(method, path, body) {
  let resp;
  try {
    resp = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, null, null);
  }
  let data = {};
  try { data = await resp.json(); } catch (e) { /* an empty or non-JSON answer */ }
  if (!resp.ok) throw new ApiError(resp.status, data, resp.headers.get("Retry-After"));
  return data;
}

// XMLHttpRequest, not fetch: it reports upload progress.
function uploadImage(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/ocr");
    xhr.setRequestHeader("X-CSRF-Token", csrf());
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.upload.onload = () => onProgress(1);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else reject(new ApiError(xhr.status, xhr.response, xhr.getResponseHeader("Retry-After")));
    };
    xhr.onerror = () => reject(new ApiError(0, null, null));
    const form = new FormData();
    form.append("file", file, file.name || "pasted.png");
    xhr.send(form);
  });
}

// A PDF goes to /api/ocr/pages, which answers one JSON line per step while its pages are read:
// `accepted` (the page count), each `page` in order, then the `result`. XMLHttpRequest shows the
// lines as they arrive (responseText grows), and the upload's progress too.
function uploadPdf(file, onProgress, onEvent) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/ocr/pages");
    xhr.setRequestHeader("X-CSRF-Token", csrf());
    let seen = 0;
    let result = null;
    let failure = null;
    const take = () => { // every complete line not handled yet
      if (xhr.status < 200 || xhr.status >= 300) return;
      let end;
      while ((end = xhr.responseText.indexOf("\n", seen)) >= 0) {
        const event = JSON.parse(xhr.responseText.slice(seen, end));
        seen = end + 1;
        if (event.event === "result") result = event;
        else if (event.event === "error") failure = new ApiError(event.status, event, null);
        else onEvent(event);
      }
    };
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.upload.onload = () => onProgress(1);
    xhr.onprogress = take;
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        take();
        if (result) resolve(result);
        else reject(failure || new ApiError(502, null, null));
        return;
      }
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      reject(new ApiError(xhr.status, body, xhr.getResponseHeader("Retry-After")));
    };
    xhr.onerror = () => reject(new ApiError(0, null, null));
    const form = new FormData();
    form.append("file", file, file.name || "document.pdf");
    xhr.send(form);
  });
}

function explain(err) {
  const key = `err.${err.code}`;
  const title = t(key, { s: err.retryAfter });
  return { title: title === key ? t("err.other") : title, detail: err.detail };
}

// ---------- routing ----------

function go(name) {
  if (location.hash !== `#/${name}`) location.hash = `#/${name}`;
  else route();
}

function show(view) {
  for (const name of ["login", "ocr", "status"]) $(`view-${name}`).hidden = name !== view;
  document.querySelectorAll(".nav a").forEach((a) => a.classList.toggle("active", a.dataset.route === view));
  document.body.dataset.view = view;
  $("login-link").hidden = Boolean(state.user) || view === "login";
}

function route() {
  const name = location.hash.replace(/^#\/?/, "") || "ocr";
  stopStatus();
  if (name === "login" || name === "register") {
    if (state.user) return go("ocr");
    show("login");
    setAuthMode(name);
  } else if (name === "status") {
    if (!state.user) {
      state.notice = "err.login_required";
      return go("login");
    }
    show("status");
    startStatus();
  } else {
    show("ocr");
  }
}

function updateWho() {
  const logged = Boolean(state.user);
  $("who").hidden = !logged;
  $("login-link").hidden = logged || document.body.dataset.view === "login";
  $("drop-login").hidden = logged;
  if (logged) {
    $("who-name").textContent = state.user.username;
    const avatar = document.querySelector(".avatar");
    avatar.textContent = state.user.username.slice(0, 1).toUpperCase();
    avatar.title = state.user.username;
  }
}

// ---------- log in / register ----------

function setAuthMode(mode) {
  state.authMode = mode;
  const register = mode === "register";
  $("tab-login").classList.toggle("active", !register);
  $("tab-register").classList.toggle("active", register);
  $("tab-login").setAttribute("aria-selected", String(!register));
  $("tab-register").setAttribute("aria-selected", String(register));
  $("confirm-row").hidden = !register;
  $("password").autocomplete = register ? "new-password" : "current-password";
  $("auth-submit-label").dataset.i18n = register ? "auth.register" : "auth.login";
  $("auth-submit-label").textContent = t($("auth-submit-label").dataset.i18n);
  renderAuthSwitch();
  for (const id of ["username", "password", "confirm"]) setFieldError(id, "");
  $("form-error").hidden = true;
  const notice = $("auth-notice");
  notice.hidden = !state.notice;
  if (state.notice) notice.textContent = t(state.notice.key || state.notice, state.notice.vars);
  ($("username").value ? $("password") : $("username")).focus();
}

function renderAuthSwitch() {
  const p = $("auth-switch");
  p.textContent = "";
  const a = document.createElement("a");
  const register = state.authMode === "register";
  a.href = register ? "#/login" : "#/register";
  a.textContent = t(register ? "auth.toLogin" : "auth.toRegister");
  p.append(a);
}

function setFieldError(id, message) {
  const el = $(`${id}-error`);
  el.textContent = message || "";
  $(id).classList.toggle("invalid", Boolean(message));
  $(id).setAttribute("aria-invalid", String(Boolean(message)));
}

function validate(id) {
  const register = state.authMode === "register";
  const value = $(id).value;
  let message = "";
  if (id === "username") {
    const name = value.trim().toLowerCase();
    if (!name) message = t("valid.required");
    else if (register && name.length < 3) message = t("valid.usernameShort");
    else if (register && name.length > 32) message = t("valid.usernameLong");
    else if (register && !/^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$/.test(name)) message = t("valid.usernameChars");
  } else if (id === "password") {
    const bytes = new TextEncoder().encode(value).length;
    if (!value) message = t("valid.required");
    else if (register && bytes < 8) message = t("valid.passwordShort");
    else if (bytes > 72) message = t("valid.passwordLong");
  } else if (id === "confirm" && register) {
    if (value !== $("password").value) message = t("valid.mismatch");
  }
  setFieldError(id, message);
  return !message;
}

function setBusy(button, busy) {
  button.disabled = busy;
  button.classList.toggle("loading", busy);
}

async function submitAuth(event) {
  event.preventDefault();
  const register = state.authMode === "register";
  const ids = register ? ["username", "password", "confirm"] : ["username", "password"];
  const ok = ids.map(validate).every(Boolean);
  if (!ok) return;
  const body = { username: $("username").value.trim(), password: $("password").value };
  $("form-error").hidden = true;
  setBusy($("auth-submit"), true);
  try {
    await ensureCsrf();
    if (register) {
      const made = await api("POST", "/api/register", body);
      state.notice = { key: "auth.registered", vars: { user: made.user.username } };
      $("password").value = "";
      $("confirm").value = "";
      go("login");
      setAuthMode("login");
      return;
    }
    const got = await api("POST", "/api/login", body);
    state.user = got.user;
    state.notice = null;
    $("password").value = "";
    updateWho();
    go("ocr");
    if (state.pending) {
      const file = state.pending;
      state.pending = null;
      startUpload(file);
    }
  } catch (err) {
    for (const [field, message] of Object.entries(err.fields || {})) {
      if ($(`${field}-error`)) setFieldError(field, message);
    }
    const { title, detail } = explain(err);
    const box = $("form-error");
    box.textContent = detail && detail !== title ? `${title} ${detail}` : title;
    box.hidden = false;
  } finally {
    setBusy($("auth-submit"), false);
  }
}

async function logout() {
  try { await api("POST", "/api/logout"); } catch (e) { /* logged out locally either way */ }
  state.user = null;
  state.notice = "auth.loggedOut";
  clearWork();
  updateWho();
  go("login");
}

// ---------- recognise ----------

function chooseFile(file) {
  if (!file) return;
  if (!state.user) {
    state.pending = file;
    state.notice = "auth.loginFirst";
    go("login");
    return;
  }
  if (file.size > state.maxUploadBytes) { // said at once, not after sending megabytes for a 413
    clearWork();
    const mib = (n) => (n / 1048576).toFixed(1);
    const detail = t("ocr.tooLarge", { name: file.name || "", size: mib(file.size), mib: mib(state.maxUploadBytes) });
    showError(new ApiError(413, { error: "too_large", message: detail }, null));
    return;
  }
  startUpload(file);
}

function hideError() {
  $("error").hidden = true;
  state.error = null;
}

function showError(err) {
  const { title, detail } = explain(err);
  $("error-title").textContent = title;
  const name = state.file && state.file.name ? `${state.file.name}: ` : "";
  $("error-detail").textContent = detail ? name + detail : "";
  $("error-retry").hidden = !RETRYABLE.has(err.code);
  $("error").hidden = false;
  state.error = err;
}

function clearWork() {
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = null;
  state.file = null;
  state.result = null;
  $("work").hidden = true;
  $("result").hidden = true;
  $("lines").textContent = "";
  $("boxes").textContent = "";
  $("preview-img").removeAttribute("src");
  document.querySelector(".preview-card").hidden = false;
  document.querySelector(".preview .frame").hidden = false;
  $("dropzone").classList.remove("compact");
  $("file").value = "";
  hideError();
}

function setProgress(fraction, label) {
  $("progress-bar").style.width = `${Math.round(fraction * 100)}%`;
  $("busy-label").textContent = label;
}

async function startUpload(file) {
  clearWork();
  state.file = file;
  state.objectUrl = URL.createObjectURL(file);
  // A PDF has no picture to draw boxes on: its pages are listed with their lines instead, as
  // each is read; the card above shows the progress until the last one.
  const isPdf = file.type === "application/pdf" || /\.pdf$/i.test(file.name || "");
  if (!isPdf) $("preview-img").src = state.objectUrl;
  document.querySelector(".preview .frame").hidden = isPdf;
  $("file-name").textContent = file.name || "";
  $("work").hidden = false;
  $("dropzone").classList.add("compact");
  $("busy").hidden = false;
  $("preview").classList.add("waiting");
  const started = performance.now();
  let uploaded = false;
  setProgress(0, t("ocr.uploading", { pct: 0 }));
  const read = { pages: [], lines: [], total: 0 }; // a PDF's pages so far
  const tick = () => {
    if (!uploaded) return;
    const s = ((performance.now() - started) / 1000).toFixed(1);
    if (read.total > 1) setProgress(read.pages.length / read.total, t("ocr.readingPages", { n: read.pages.length, total: read.total, s }));
    else setProgress(1, t("ocr.recognising", { s }));
  };
  state.busyTimer = setInterval(tick, 100);
  const uploading = (fraction) => {
    if (fraction >= 1) { uploaded = true; tick(); }
    else setProgress(fraction, t("ocr.uploading", { pct: Math.round(fraction * 100) }));
  };
  const onEvent = (event) => {
    if (state.file !== file) return;
    if (event.event === "accepted") { // (again after a retry elsewhere: the pages start over)
      Object.assign(read, { pages: [], lines: [], total: event.pages });
      $("result").hidden = true;
    } else if (event.event === "page") {
      read.pages.push({ ...event.page, first_line: read.lines.length });
      read.lines.push(...event.lines);
      renderLines(read.lines, read.pages);
      $("result").hidden = false;
    }
    tick();
  };
  try {
    const result = isPdf ? await uploadPdf(file, uploading, onEvent) : await uploadImage(file, uploading);
    if (state.file !== file) return; // cleared or replaced meanwhile
    if (isPdf) document.querySelector(".preview-card").hidden = true;
    renderResult(result, performance.now() - started);
  } catch (err) {
    if (state.file !== file) return;
    if (err.status === 401) {
      state.user = null;
      updateWho();
      state.pending = file;
      state.notice = "auth.sessionEnded";
      clearWork();
      go("login");
      return;
    }
    const keep = state.file;
    clearWork();
    state.file = keep;
    showError(err);
  } finally {
    clearInterval(state.busyTimer);
    $("busy").hidden = true;
    $("preview").classList.remove("waiting");
  }
}

// "CPU", or "CUDA (TensorRT)" when the execution provider is not the device's own.
function device(name, provider) {
  const short = (provider || "").replace("ExecutionProvider", "");
  if (!name) return short || "-";
  return short && short.toLowerCase() !== name.toLowerCase() ? `${name.toUpperCase()} (${short})` : name.toUpperCase();
}

function ms(value) {
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

function renderResult(result, roundTripMs) {
  state.result = result;
  renderLines(result.lines, result.pages || [], result);
  $("no-text").hidden = result.lines.length > 0;
  // The recognition itself, and apart from it the time the call waited in an instance's queue.
  const queued = result.timing.queue_ms || 0;
  $("meta-time").textContent = ms(Math.max(0, result.timing.total_ms - queued));
  $("meta-queue").textContent = ms(queued);
  $("meta-trip").textContent = ms(roundTripMs);
  $("meta-instance").textContent = result.served_by.instance_id || "-";
  $("meta-device").textContent = device(result.served_by.device, result.served_by.execution_provider);
  $("result").hidden = false;
  if (window.matchMedia("(max-width: 760px)").matches) $("result").scrollIntoView({ block: "start" });
}

// The lines, under a heading per page for a PDF (`pages` so far, while it is read), with their
// boxes over the picture for an image (`image`: its size).
function renderLines(lines, pages, image) {
  const svg = $("boxes");
  svg.textContent = "";
  if (image) svg.setAttribute("viewBox", `0 0 ${image.width} ${image.height}`);
  const list = $("lines");
  list.textContent = "";
  if (!image) for (const id of ["meta-time", "meta-queue", "meta-trip", "meta-instance", "meta-device"]) $(id).textContent = "…";
  const addLine = (line, i) => {
    if (line.box.length === 4 && pages.length === 0) {
      const poly = document.createElementNS("http://www.w3.org/2000/svg", "polygon");
      poly.setAttribute("points", line.box.map((p) => p.join(",")).join(" "));
      poly.dataset.i = String(i);
      svg.append(poly);
    }
    const li = document.createElement("li");
    li.dataset.i = String(i);
    const text = document.createElement("span");
    text.className = "line-text";
    text.textContent = line.text;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${Math.round(line.score * 100)}%`;
    li.append(text, score);
    list.append(li);
  };
  if (pages.length === 0) lines.forEach(addLine);
  for (const page of pages) { // a PDF: each page's heading, then its lines
    const head = document.createElement("li");
    head.className = "page-head";
    head.textContent = t("ocr.page", { n: page.number });
    list.append(head);
    for (let i = page.first_line; i < page.first_line + page.line_count; i++) addLine(lines[i], i);
  }
}

function highlight(i, on) {
  document.querySelectorAll(`[data-i="${i}"]`).forEach((el) => el.classList.toggle("hot", on));
}

function toast(message) {
  const el = $("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 2200);
}

async function copyText() {
  const text = state.result ? state.result.text : "";
  try {
    await navigator.clipboard.writeText(text);
    toast(t("ocr.copied"));
    return;
  } catch (e) { /* no async clipboard (plain http on another host): the old way below */ }
  const area = document.createElement("textarea");
  area.value = text;
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  toast(t(ok ? "ocr.copied" : "ocr.copyFailed"));
}

function bindUpload() {
  const zone = $("dropzone");
  $("pick").addEventListener("click", () => $("file").click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  $("file").addEventListener("change", () => chooseFile($("file").files[0]));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
  // A file dropped beside the zone must not make the browser navigate away to it.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    if (document.body.dataset.view !== "ocr") return;
    const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((it) => it.kind === "file");
    if (item) { e.preventDefault(); chooseFile(item.getAsFile()); }
  });
  $("copy").addEventListener("click", copyText);
  $("again").addEventListener("click", () => { clearWork(); zone.focus(); });
  $("error-retry").addEventListener("click", () => { if (state.file) startUpload(state.file); });
  for (const el of [$("lines"), $("boxes")]) {
    el.addEventListener("mouseover", (e) => { const i = e.target.closest("[data-i]"); if (i) highlight(i.dataset.i, true); });
    el.addEventListener("mouseout", (e) => { const i = e.target.closest("[data-i]"); if (i) highlight(i.dataset.i, false); });
  }
}

// ---------- status ----------

function uptime(startedAt, now) {
  if (!startedAt) return "-";
  const s = Math.max(0, Math.floor(now - startedAt));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(s % 60).padStart(2, "0")}s`;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

function renderStatus(snapshot) {
  const cards = $("service-cards");
  cards.textContent = "";
  for (const [name, entry] of Object.entries(snapshot.services).sort()) {
    const card = document.createElement("div");
    card.className = `card service ${entry.healthy === entry.instances ? "good" : entry.healthy ? "warn" : "bad"}`;
    card.dataset.service = name;
    const label = t(`svc.${name}`);
    card.innerHTML = "<div class=\"svc-name\"></div><div class=\"svc-count\"><b></b><span></span></div><div class=\"svc-sub\"></div>";
    card.querySelector(".svc-name").textContent = label === `svc.${name}` ? name : `${label} · ${name}`;
    card.querySelector("b").textContent = String(entry.healthy);
    card.querySelector(".svc-count span").textContent = ` / ${entry.instances}`;
    card.querySelector(".svc-sub").textContent = t("status.healthyOf", { h: entry.healthy, n: entry.instances });
    cards.append(card);
  }
  const detail = snapshot.detail !== false;
  $("status-limited").hidden = detail;
  for (const card of document.querySelectorAll("[data-detail]")) card.hidden = !detail;
  if (!detail) return;
  const body = document.querySelector("#instances tbody");
  body.textContent = "";
  if (!snapshot.instances.length) {
    const row = document.createElement("tr");
    cell(row, t("status.none"), "empty").colSpan = 10;
    body.append(row);
  }
  for (const inst of snapshot.instances) {
    const row = document.createElement("tr");
    row.dataset.instance = inst.id;
    cell(row, inst.service);
    cell(row, inst.id, "mono");
    cell(row, inst.address, "mono");
    const health = cell(row, "");
    const badge = document.createElement("span");
    badge.className = `badge ${inst.health === "SERVING" ? "good" : "bad"}`;
    badge.textContent = inst.health;
    health.append(badge);
    cell(row, device(inst.device, inst.execution_provider));
    cell(row, inst.slots ? String(inst.slots) : "-");
    cell(row, inst.queue || "-");
    cell(row, inst.in_flight === null || inst.in_flight === undefined ? "-" : String(inst.in_flight));
    cell(row, uptime(inst.started_at, snapshot.at));
    cell(row, inst.version || "-");
    body.append(row);
  }
  const lb = document.querySelector("#balancer tbody");
  lb.textContent = "";
  for (const [service, view] of Object.entries(snapshot.bff || {})) {
    for (const ep of view.endpoints) {
      const row = document.createElement("tr");
      cell(row, service);
      cell(row, ep.address, "mono");
      cell(row, String(ep.in_flight));
      cell(row, `${ep.ewma_ms.toFixed(1)} ms`);
      cell(row, String(ep.requests));
      cell(row, t(ep.ejected ? "status.ejected" : "status.ok"));
      lb.append(row);
    }
  }
  $("status-updated").textContent = t("status.updated", { time: new Date(snapshot.at * 1000).toLocaleTimeString() });
}

async function loadStatus() {
  try {
    const snapshot = await api("GET", "/api/status");
    $("status-error").hidden = true;
    renderStatus(snapshot);
  } catch (err) {
    if (err.status === 401) {
      state.user = null;
      updateWho();
      state.notice = "auth.sessionEnded";
      go("login");
      return;
    }
    const { title, detail } = explain(err);
    $("status-error-text").textContent = `${title} ${detail}`;
    $("status-error").hidden = false;
  }
}

function startStatus() {
  stopStatus();
  loadStatus();
  state.statusTimer = setInterval(() => { if ($("status-auto").checked) loadStatus(); }, STATUS_EVERY_MS);
}

function stopStatus() {
  if (state.statusTimer) clearInterval(state.statusTimer);
  state.statusTimer = null;
}

// ---------- start ----------

function applyLanguage() {
  window.i18n.apply(document);
  $("drop-types").textContent = t("ocr.types", { mib: Math.round(state.maxUploadBytes / 1048576 * 10) / 10 });
  $("lang-toggle").textContent = t("lang.other");
  if (state.authMode) renderAuthSwitch();
  if (state.notice && !$("auth-notice").hidden) {
    $("auth-notice").textContent = t(state.notice.key || state.notice, state.notice.vars);
  }
  if (state.error) showError(state.error);
  if (document.body.dataset.view === "status") loadStatus();
}

async function start() {
  applyLanguage();
  $("lang-toggle").addEventListener("click", () => {
    window.i18n.set(window.i18n.lang === "zh" ? "en" : "zh");
    applyLanguage();
  });
  $("tab-login").addEventListener("click", () => go("login"));
  $("tab-register").addEventListener("click", () => go("register"));
  $("auth-form").addEventListener("submit", submitAuth);
  for (const id of ["username", "password", "confirm"]) {
    $(id).addEventListener("blur", () => { if ($(id).value) validate(id); });
    $(id).addEventListener("input", () => { if ($(id).classList.contains("invalid")) validate(id); });
  }
  $("logout").addEventListener("click", logout);
  $("status-refresh").addEventListener("click", loadStatus);
  bindUpload();
  await ensureCsrf();
  try {
    state.maxUploadBytes = (await api("GET", "/api/config")).max_upload_bytes;
    applyLanguage();
  } catch (e) { /* keep the default; the server still enforces its own limit */ }
  try {
    state.user = (await api("GET", "/api/me")).user;
  } catch (e) {
    state.user = null;
  }
  updateWho();
  window.addEventListener("hashchange", route);
  route();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
