// llamacpy chat page: talks only to this server's POST v1/chat/completions (SSE stream).
// Owns: conversations in localStorage, settings, the API key in sessionStorage, rendering.
// Must not: insert model or user text as HTML (textContent / createElement only), load anything
// from another origin, or keep the API key beyond the browser tab's session.
"use strict";

const CONV_KEY = "llamacpy.conversations.v1";
const CURRENT_KEY = "llamacpy.current.v1";
const SETTINGS_KEY = "llamacpy.settings.v1";
const APIKEY_KEY = "llamacpy.apiKey";
const SETTING_FIELDS = ["system", "temperature", "top_p", "max_tokens", "seed", "grammar", "json_schema"];

const $ = (id) => document.getElementById(id);
const el = {
  list: $("conversations"), messages: $("messages"), input: $("input"), send: $("send"),
  stop: $("stop"), composer: $("composer"), model: $("model-name"), notice: $("notice"),
  settings: $("settings"), settingsToggle: $("settings-toggle"), settingsError: $("settings-error"),
  keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"), keyMessage: $("key-message"),
};

let conversations = loadJSON(CONV_KEY, []).filter((c) => c && c.id && Array.isArray(c.messages));
// conversations: [{id, title, updated, messages: [{role, content, meta}]}]
let currentId = localStorage.getItem(CURRENT_KEY);
let settings = loadJSON(SETTINGS_KEY, {});
let controller = null;                         // AbortController of the stream in flight

function loadJSON(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(key));
    return v === null || Array.isArray(v) !== Array.isArray(fallback) || typeof v !== "object" ? fallback : v;
  } catch (e) {
    return fallback;
  }
}

function save() {
  try {
    localStorage.setItem(CONV_KEY, JSON.stringify(conversations));
    if (currentId) localStorage.setItem(CURRENT_KEY, currentId);
    else localStorage.removeItem(CURRENT_KEY);
  } catch (e) {
    notice("Could not save the conversation in this browser: " + e.message);
  }
}

function notice(text) {
  el.notice.textContent = text || "";
  el.notice.hidden = !text;
}

function current() {
  return conversations.find((c) => c.id === currentId) || null;
}

// ---------- rendering (text nodes only, never parsed as HTML) ----------

function node(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}

// Plain text with `inline code`; line breaks are kept by CSS (white-space: pre-wrap).
function appendInline(parent, text) {
  const p = node("div", "text");
  const parts = text.split(/`([^`\n]+)`/);
  parts.forEach((part, i) => {
    if (i % 2) p.appendChild(node("code", null, part));
    else if (part) p.appendChild(document.createTextNode(part));
  });
  parent.appendChild(p);
}

// ``` fences become <pre><code>; an unclosed fence (still streaming) runs to the end.
function renderContent(target, text) {
  const frag = document.createDocumentFragment();
  const lines = text.split("\n");
  let buf = [];
  let code = null;   // {lang, lines} while inside a fence
  const flushText = () => {
    const t = buf.join("\n").replace(/^\n+|\n+$/g, "");
    if (t) appendInline(frag, t);
    buf = [];
  };
  const flushCode = () => {
    const pre = node("pre");
    if (code.lang) pre.dataset.lang = code.lang;
    pre.appendChild(node("code", null, code.lines.join("\n")));
    frag.appendChild(pre);
    code = null;
  };
  for (const line of lines) {
    const fence = /^\s*```\s*([^`\s]*)\s*$/.exec(line);
    if (code) {
      if (fence && !fence[1]) flushCode();
      else code.lines.push(line);
    } else if (fence) {
      flushText();
      code = { lang: fence[1], lines: [] };
    } else {
      buf.push(line);
    }
  }
  if (code) flushCode();
  flushText();
  target.replaceChildren(frag);
}

function speedText(meta) {
  if (!meta) return "";
  if (meta.error) return "error: " + meta.error;
  const parts = [];
  if (meta.stopped) parts.push("stopped");
  const t = meta.timings;
  if (t && typeof t.predicted_per_second === "number") {
    parts.push(`${t.predicted_n} tokens · ${t.predicted_per_second.toFixed(1)} tokens/s`);
  } else if (meta.usage && meta.usage.completion_tokens !== undefined) {
    parts.push(`${meta.usage.completion_tokens} tokens`);
  }
  if (meta.finish_reason && meta.finish_reason !== "stop") parts.push(meta.finish_reason);
  return parts.join(" · ");
}

function messageView(msg) {
  const box = node("article", "msg " + msg.role);
  box.appendChild(node("div", "role", msg.role === "user" ? "You" : "Assistant"));
  const body = node("div", "content");
  renderContent(body, msg.content);
  box.appendChild(body);
  if (msg.role === "assistant") {
    const s = node("div", "speed", speedText(msg.meta));
    if (msg.meta && msg.meta.timings) {
      const t = msg.meta.timings;
      if (typeof t.prompt_per_second === "number") {
        s.title = `prompt: ${t.prompt_n} tokens · ${t.prompt_per_second.toFixed(1)} tokens/s`;
      }
    }
    if (msg.meta && msg.meta.error) box.classList.add("error");
    box.classList.add(msg.meta && msg.meta.streaming ? "streaming" : "done");
    box.appendChild(s);
  }
  return box;
}

function renderMessages() {
  const conv = current();
  el.messages.replaceChildren();
  if (!conv || !conv.messages.length) {
    el.messages.appendChild(node("p", "empty", "Start a conversation below."));
    return;
  }
  for (const msg of conv.messages) el.messages.appendChild(messageView(msg));
  el.messages.scrollTop = el.messages.scrollHeight;
}

function renderList() {
  el.list.replaceChildren();
  const sorted = [...conversations].sort((a, b) => b.updated - a.updated);
  for (const conv of sorted) {
    const li = node("li", conv.id === currentId ? "active" : "");
    li.dataset.id = conv.id;
    const open = node("button", "open", conv.title || "(untitled)");
    open.type = "button";
    open.title = conv.title || "";
    open.addEventListener("click", () => switchTo(conv.id));
    const del = node("button", "delete", "×");
    del.type = "button";
    del.setAttribute("aria-label", "Delete conversation");
    del.title = "Delete conversation";
    del.addEventListener("click", () => removeConversation(conv.id));
    li.append(open, del);
    el.list.appendChild(li);
  }
}

function renderAll() {
  renderList();
  renderMessages();
}

// ---------- conversations ----------

function switchTo(id) {
  stopGeneration();
  currentId = id;
  save();
  renderAll();
  el.input.focus();
}

function newConversation() {
  switchTo(null);
}

function removeConversation(id) {
  if (id === currentId) stopGeneration();
  conversations = conversations.filter((c) => c.id !== id);
  if (id === currentId) {
    const next = [...conversations].sort((a, b) => b.updated - a.updated)[0];
    currentId = next ? next.id : null;
  }
  save();
  renderAll();
}

function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
}

// ---------- settings ----------

function readSettingsForm() {
  for (const f of SETTING_FIELDS) settings[f] = $("s-" + f).value;
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  el.settingsError.textContent = "";
  try {
    requestOptions();
  } catch (e) {
    el.settingsError.textContent = e.message;
  }
}

function fillSettingsForm() {
  for (const f of SETTING_FIELDS) $("s-" + f).value = settings[f] || "";
}

function toggleSettings(show) {
  el.settings.hidden = !show;
  el.settingsToggle.setAttribute("aria-expanded", String(show));
}

// The request fields from the settings; an empty field is left to the server.
function requestOptions() {
  const out = {};
  const num = (name, key, integer) => {
    const raw = (settings[name] || "").trim();
    if (!raw) return;
    const v = Number(raw);
    if (!Number.isFinite(v) || (integer && !Number.isInteger(v))) {
      throw new Error(`Settings: ${name} must be ${integer ? "an integer" : "a number"}, got "${raw}"`);
    }
    out[key] = v;
  };
  num("temperature", "temperature");
  num("top_p", "top_p");
  num("max_tokens", "max_tokens", true);
  num("seed", "seed", true);
  const grammar = (settings.grammar || "").trim();
  if (grammar) out.grammar = settings.grammar;
  const schema = (settings.json_schema || "").trim();
  if (schema) {
    let parsed;
    try {
      parsed = JSON.parse(schema);
    } catch (e) {
      throw new Error("Settings: JSON schema is not valid JSON: " + e.message);
    }
    out.response_format = { type: "json_schema", json_schema: { name: "schema", schema: parsed } };
  }
  return out;
}

// ---------- API key (sessionStorage only) ----------

function askForKey(message) {
  return new Promise((resolve) => {
    el.keyMessage.textContent = message;
    el.keyInput.value = "";
    const done = (key) => {
      el.keyForm.onsubmit = null;
      $("key-cancel").onclick = null;
      el.keyDialog.onclose = null;
      if (el.keyDialog.open) el.keyDialog.close();
      resolve(key);
    };
    el.keyForm.onsubmit = (e) => {
      e.preventDefault();
      done(el.keyInput.value.trim() || null);
    };
    $("key-cancel").onclick = () => done(null);
    el.keyDialog.onclose = () => done(null);
    el.keyDialog.showModal();
    el.keyInput.focus();
  });
}

function authHeaders() {
  const key = sessionStorage.getItem(APIKEY_KEY);
  return key ? { Authorization: "Bearer " + key } : {};
}

// ---------- streaming ----------

async function errorMessage(res) {
  let msg = `${res.status} ${res.statusText}`;
  try {
    const j = await res.json();
    if (j && j.error && j.error.message) msg = `${res.status}: ${j.error.message}`;
  } catch (e) { /* body not JSON */ }
  return msg;
}

// POST the chat; on 401 ask for the key and try again. Returns the ok Response.
async function postChat(body, signal) {
  for (;;) {
    const res = await fetch("v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
      body: JSON.stringify(body),
      signal,
    });
    if (res.status !== 401) return res;
    const had = sessionStorage.getItem(APIKEY_KEY);
    sessionStorage.removeItem(APIKEY_KEY);
    const key = await askForKey(had ? "That API key was refused. Enter the server's API key."
                                    : "This server needs an API key.");
    if (!key) throw new Error("an API key is needed (401)");
    sessionStorage.setItem(APIKEY_KEY, key);
  }
}

// Read `data: {json}` events; call onEvent(json) for each. True when `data: [DONE]` was seen.
async function readEvents(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      const m = /^(data|error):\s?(.*)$/.exec(line);
      if (!m) continue;
      if (m[2] === "[DONE]") return true;
      let j;
      try {
        j = JSON.parse(m[2]);
      } catch (e) {
        throw new Error("bad event from the server: " + m[2].slice(0, 80));
      }
      if (j.error) throw new Error(j.error.message || JSON.stringify(j.error));
      onEvent(j);
    }
  }
}

function setBusy(busy) {
  el.send.disabled = busy;
  el.stop.hidden = !busy;
  document.body.classList.toggle("busy", busy);
}

function stopGeneration() {
  if (controller) controller.abort();
}

async function send() {
  const text = el.input.value;
  if (!text.trim() || controller) return;
  let options;
  try {
    options = requestOptions();
  } catch (e) {
    notice(e.message);
    toggleSettings(true);
    return;
  }
  notice("");
  let conv = current();
  if (!conv) {
    conv = { id: newId(), title: text.trim().replace(/\s+/g, " ").slice(0, 48), updated: Date.now(), messages: [] };
    conversations.push(conv);
    currentId = conv.id;
  }
  conv.messages.push({ role: "user", content: text });
  const reply = { role: "assistant", content: "", meta: { streaming: true } };
  conv.messages.push(reply);
  conv.updated = Date.now();
  el.input.value = "";
  save();
  renderAll();

  const view = el.messages.lastElementChild;
  const body = view.querySelector(".content");
  const speed = view.querySelector(".speed");
  speed.textContent = "…";
  let frame = 0;
  let lastSave = 0;
  const paint = () => {
    frame = 0;
    const stick = el.messages.scrollHeight - el.messages.scrollTop - el.messages.clientHeight < 40;
    renderContent(body, reply.content);
    if (stick) el.messages.scrollTop = el.messages.scrollHeight;
  };

  // The history sent: a failed reply and the message that led to it are left out.
  const history = [];
  for (const m of conv.messages.slice(0, -1)) {
    if (m.meta && m.meta.error) {
      if (history.length && history[history.length - 1].role === "user") history.pop();
    } else {
      history.push({ role: m.role, content: m.content });
    }
  }
  const system = (settings.system || "").trim();
  const payload = {
    messages: system ? [{ role: "system", content: settings.system }, ...history] : history,
    stream: true,
    ...options,
  };
  const meta = {};
  controller = new AbortController();
  const signal = controller.signal;
  setBusy(true);
  try {
    const res = await postChat(payload, signal);
    if (!res.ok) throw new Error(await errorMessage(res));
    const complete = await readEvents(res, (j) => {
      const choice = j.choices && j.choices[0];
      if (choice) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          reply.content += piece;
          if (!frame) frame = requestAnimationFrame(paint);
          if (Date.now() - lastSave > 1000) { lastSave = Date.now(); save(); }
        }
        if (choice.finish_reason) meta.finish_reason = choice.finish_reason;
      }
      if (j.timings) meta.timings = j.timings;
      if (j.usage) meta.usage = j.usage;
    });
    if (!complete && !meta.finish_reason) throw new Error("the server closed the stream before its end");
  } catch (e) {
    if (signal.aborted) meta.stopped = true;
    else meta.error = e.message;
  } finally {
    if (frame) cancelAnimationFrame(frame);
    controller = null;
    reply.meta = meta;
    conv.updated = Date.now();
    save();
    setBusy(false);
    if (conv.id === currentId && body.isConnected) {
      renderContent(body, reply.content);
      speed.textContent = speedText(meta);
      if (meta.error) view.classList.add("error");
      view.classList.replace("streaming", "done");
    }
  }
}

// ---------- model name ----------

async function showModel(attempt) {
  try {
    const res = await fetch("v1/models", { headers: authHeaders() });
    if (res.ok) {
      const j = await res.json();
      const m = j.data && j.data[0];
      el.model.textContent = m ? String(m.id).split(/[\\/]/).pop() : "(no model)";
      el.model.title = m ? String(m.id) : "";
      return;
    }
    el.model.textContent = res.status === 503 ? "loading model…" : `model: ${res.status}`;
    if (res.status !== 503) return;
  } catch (e) {
    el.model.textContent = "server unreachable";
  }
  if (attempt < 150) setTimeout(() => showModel(attempt + 1), 2000);
}

// ---------- wiring ----------

el.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
el.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    send();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  if (controller) {
    e.preventDefault();
    stopGeneration();
  } else if (!el.settings.hidden) {
    toggleSettings(false);
  }
});
el.stop.addEventListener("click", stopGeneration);
$("new-chat").addEventListener("click", newConversation);
$("chats-toggle").addEventListener("click", () => document.body.classList.toggle("show-chats"));
// The narrow-screen drawer closes on any choice in it, or on a click beside it.
$("sidebar").addEventListener("click", (e) => {
  if (e.target.closest("button")) document.body.classList.remove("show-chats");
});
document.querySelector("main").addEventListener("click", (e) => {
  if (e.target.id !== "chats-toggle") document.body.classList.remove("show-chats");
});
el.settingsToggle.addEventListener("click", () => toggleSettings(el.settings.hidden));
$("settings-close").addEventListener("click", () => toggleSettings(false));
$("settings-reset").addEventListener("click", () => {
  settings = {};
  fillSettingsForm();
  readSettingsForm();
});
for (const f of SETTING_FIELDS) $("s-" + f).addEventListener("input", readSettingsForm);

// A reply cut off by a reload is kept, marked as stopped.
for (const c of conversations) {
  for (const m of c.messages || []) if (m.meta && m.meta.streaming) m.meta = { stopped: true };
}
if (!current()) currentId = null;
fillSettingsForm();
renderAll();
showModel(0);
el.input.focus();
