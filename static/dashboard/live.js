/* Shared helpers of the dashboard pages: a reconnecting websocket, formatting, SVG. */
"use strict";

const Live = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const sockets = []; // open LiveSockets, for the browser tests and the devtools console

  function readJson(id) {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  /* One websocket that reconnects with backoff. `query()` is asked on every (re)connect,
     so a page can resume from its last seq (`?after_seq=N`). */
  class LiveSocket {
    constructor(path, { onMessage, onOpen, query } = {}) {
      this.path = path;
      this.onMessage = onMessage;
      this.onOpen = onOpen;
      this.query = query || (() => "");
      this.delay = 500;
      this.connected = false;
      this.ws = null;
      sockets.push(this);
      this.connect();
      // Keeps idle proxies from closing the socket, and finds dead ones quickly.
      setInterval(() => this.send({ type: "ping" }), 25000);
    }
    connect() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const q = this.query();
      this.ws = new WebSocket(`${scheme}//${location.host}${this.path}${q ? "?" + q : ""}`);
      setConnState(this.connected ? "reconnecting" : "connecting");
      this.ws.onopen = () => {
        this.delay = 500;
        setConnState("live");
        if (this.onOpen) this.onOpen(this.connected);
        this.connected = true;
      };
      this.ws.onmessage = (ev) => {
        let msg;
        try { msg = JSON.parse(ev.data); } catch (e) { return; }
        // Under load the server sends what queued up in one frame: {"type": "batch", "messages": [...]}.
        const messages = msg.type === "batch" && Array.isArray(msg.messages) ? msg.messages : [msg];
        for (const m of messages) if (m.type !== "pong") this.onMessage(m);
      };
      this.ws.onclose = (ev) => {
        if (ev.code === 4403) { setConnState("closed", "not allowed"); return; }
        if (ev.code === 4404) { setConnState("closed", "no such session"); return; }
        setConnState("reconnecting");
        setTimeout(() => this.connect(), this.delay);
        this.delay = Math.min(this.delay * 2, 10000);
      };
    }
    send(obj) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
    }
  }

  function setConnState(state, label) {
    const node = document.getElementById("conn");
    if (!node) return;
    node.dataset.state = state;
    node.querySelector(".conn-label").textContent = label || state;
  }

  function ms(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 10000) return (v / 1000).toFixed(1) + " s";
    if (v >= 1000) return (v / 1000).toFixed(2) + " s";
    return Math.round(v) + " ms";
  }
  function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(v < 0.1 ? 1 : 0) + "%"; }
  function num(v, digits = 2) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits).replace(/\.?0+$/, "") || "0"; }
  function duration(seconds) {
    if (seconds === null || seconds === undefined || seconds < 0) return "–";
    const s = Math.floor(seconds % 60), m = Math.floor(seconds / 60) % 60, h = Math.floor(seconds / 3600);
    const pad = (x) => String(x).padStart(2, "0");
    return h ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
  }
  function clock(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }
  function sessionSeconds(row, now = Date.now()) {
    const start = Date.parse(row.started_at || row.created_at);
    if (!start) return null;
    const end = row.ended_at ? Date.parse(row.ended_at) : now;
    return Math.max(0, (end - start) / 1000);
  }

  /* el("td", {class: "num"}, "text", childNode, …) */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  /* A thin horizontal bar: p50 solid, p95 lighter, a dashed reference line (budget). */
  function rangeBar(p50, p95, ref, max) {
    const W = 200, H = 16, scale = (v) => Math.max(0, Math.min(W, (v / max) * W));
    const over = p95 !== null && ref && p95 > ref;
    return svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
                        "aria-label": `p50 ${ms(p50)}, p95 ${ms(p95)}` },
      svg("rect", { x: 0, y: 4, width: W, height: 8, rx: 2, fill: "var(--panel-2)" }),
      p95 !== null ? svg("rect", { x: 0, y: 4, width: scale(p95), height: 8, rx: 2, fill: over ? "var(--bad-soft)" : "var(--accent-soft)" }) : null,
      p50 !== null ? svg("rect", { x: 0, y: 4, width: scale(p50), height: 8, rx: 2, fill: over ? "var(--bad)" : "var(--accent)" }) : null,
      ref ? svg("line", { x1: scale(ref), x2: scale(ref), y1: 0, y2: H, class: "budget" }) : null);
  }

  /* Round axis ticks (0, 250, 500 … ms) covering `max`, at most ~6 of them. */
  function niceTicks(max, count = 5) {
    const steps = [50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 30000, 60000];
    const step = steps.find((s) => max / s <= count) || steps[steps.length - 1];
    const ticks = [];
    for (let v = 0; v <= max + 1e-9; v += step) ticks.push(v);
    return { ticks, top: ticks[ticks.length - 1] < max ? ticks[ticks.length - 1] + step : ticks[ticks.length - 1] };
  }

  return { sockets, niceTicks, LiveSocket, readJson, ms, pct, num, duration, clock, sessionSeconds, el, svg, rangeBar, setConnState };
})();
