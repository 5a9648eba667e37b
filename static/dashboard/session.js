/* /dashboard/sessions/<id>/: live transcript, per-turn waterfall against budgets, timeline. */
"use strict";

(() => {
  const { el, svg, ms, duration, sessionSeconds, clock } = Live;
  const config = Live.readJson("dashboard-config");
  const detail = Live.readJson("session-detail");
  const LIVE = new Set(["created", "active", "reconnecting"]);
  // Pipeline stages laid end to end; STT, TTFA and e2e are measured from the caller's end
  // of speech, so they start at zero (STT runs inside the end-of-utterance delay: the turn
  // ends once the final transcript is in, so livekit-agents' two figures overlap).
  const SEQUENTIAL = ["eou", "llm_ttft", "tool", "tts_ttfb"];
  const TOTALS = ["ttfa", "e2e"];
  const LABELS = Object.fromEntries(detail.stages.map((s) => [s.key, s.label]));
  const SHORT = { eou: "End of utterance", stt: "STT", llm_ttft: "LLM first token", tool: "Tool calls",
                  tts_ttfb: "TTS first byte", ttfa: "First audio (TTFA)", e2e: "End to end",
                  heard: "Caller heard", playout: "Playout/transport" };
  const has = (v) => v !== null && v !== undefined;
  // The caller's own gap (reported after the fact) against the platform's e2e (else ttfa):
  // the difference is playout, transport and what the platform does not see.
  function platformGap(t) { return has(t.stages_ms.e2e) ? t.stages_ms.e2e : t.stages_ms.ttfa; }

  const state = {
    session: detail.session,
    budgets: detail.budgets_ms,
    turns: new Map(detail.turns.map((t) => [t.index, t])),
    events: detail.events.slice(),
    lastSeq: detail.events.length ? detail.events[detail.events.length - 1].seq : 0,
    selected: null,       // turn index shown in the waterfall; null follows the latest
    resyncing: false,
    report: detail.report,
  };

  // --- header facts -------------------------------------------------------------------
  function renderFacts() {
    const s = state.session;
    const fact = (label, value, key) => el("div", { dataset: { fact: key } }, el("dt", {}, label), el("dd", {}, value));
    document.getElementById("facts").replaceChildren(
      fact("State", el("span", { class: "badge " + s.state, title: s.end_reason || null }, s.state), "state"),
      fact("Prompt", s.prompt_version ? "v" + s.prompt_version : "–", "prompt"),
      fact(s.direction === "outbound" ? "Called" : "Caller", (s.channel === "phone" ? "☎ " : "") + (s.caller_id || "–"), "caller"),
      fact("Duration", el("span", { id: "duration" }, duration(sessionSeconds(s))), "duration"),
      fact("Turns", s.turns, "turns"),
      fact("Last e2e", ms(s.last_e2e_ms), "last-e2e"),
      fact("Interrupts", s.interrupts, "interrupts"),
      fact("Reconnects", s.reconnects, "reconnects"),
    );
    document.getElementById("s-agent").textContent = s.agent_name || s.agent;
  }

  // --- charts -------------------------------------------------------------------------
  function turnList() { return [...state.turns.values()].sort((a, b) => a.index - b.index); }

  function renderStrip() {
    const turns = turnList().slice(-40);
    const box = document.getElementById("turn-strip");
    if (!turns.length) { box.replaceChildren(el("p", { class: "empty" }, "No turns yet.")); return; }
    const W = 480, H = 250, top = 14, bottom = 22, left = 40, right = 6;
    const budget = state.budgets.e2e;
    const vals = turns.map((t) => t.stages_ms.e2e || 0);
    const { ticks: tickValues, top: max } = Live.niceTicks(Math.max(budget * 1.15, ...vals), 4);
    const y = (v) => top + (H - top - bottom) * (1 - v / max);
    const slot = (W - left - right) / Math.max(turns.length, 8);
    const selected = state.selected ?? turns[turns.length - 1].index;
    const ticks = tickValues.concat(tickValues.at(-1) < max ? [max] : []).map((v) => svg("g", {},
      svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "chart-grid" }),
      svg("text", { x: left - 4, y: y(v) + 3, "text-anchor": "end", class: "chart-text" }, v >= 1000 ? (v / 1000).toFixed(1) + "s" : Math.round(v))));
    const bars = turns.map((t, i) => {
      const v = t.stages_ms.e2e;
      const x = left + i * slot + slot * 0.18, w = slot * 0.64;
      const bad = (t.breaches || []).length > 0;
      return svg("g", { class: "bar", "data-turn": t.index, "data-breached": bad ? "1" : "0" },
        svg("rect", { x: left + i * slot, y: top, width: slot, height: H - top - bottom, fill: "transparent" }),
        v === null ? null : svg("rect", { x, y: y(v), width: w, height: Math.max(1, y(0) - y(v)), rx: 2,
          fill: bad ? "var(--bad)" : "var(--s-e2e)", opacity: t.index === selected ? 1 : 0.55,
          stroke: t.index === selected ? "var(--text)" : "none", "stroke-width": 1 },
          svg("title", {}, `turn ${t.index}: e2e ${ms(v)}${bad ? " · over budget: " + t.breaches.join(", ") : ""}`)),
        turns.length <= 20 || i % 5 === 0 ? svg("text", { x: x + w / 2, y: H - 8, "text-anchor": "middle", class: "chart-text" }, t.index) : null);
    });
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "End-to-end latency per turn" },
      ticks, bars,
      svg("line", { x1: left, x2: W - right, y1: y(budget), y2: y(budget), class: "budget" }),
      svg("text", { x: W - right, y: y(budget) - 4, "text-anchor": "end", class: "chart-text" }, `e2e budget ${ms(budget)}`));
    chart.addEventListener("click", (ev) => {
      const g = ev.target.closest("[data-turn]");
      if (g) select(Number(g.dataset.turn));
    });
    box.replaceChildren(el("div", { class: "waterfall-title" }, "End to end, per turn"), chart);
  }

  function renderWaterfall() {
    const box = document.getElementById("waterfall");
    const turns = turnList();
    if (!turns.length) { box.replaceChildren(el("p", { class: "empty" }, "The waterfall appears after the first turn.")); return; }
    const turn = state.turns.get(state.selected) || turns[turns.length - 1];
    const st = turn.stages_ms, budgets = state.budgets, breaches = new Set(turn.breaches || []);
    const rows = [];
    let offset = 0;
    for (const key of SEQUENTIAL) {
      rows.push({ key, start: offset, value: st[key] });
      if (st[key] !== null && st[key] !== undefined) offset += st[key];
      if (key === "eou") rows.push({ key: "stt", start: 0, value: st.stt });
    }
    for (const key of TOTALS) rows.push({ key, start: 0, value: st[key] });
    const heard = turn.heard_gap_ms, platform = platformGap(turn);
    if (turn.user_text !== "" || has(heard)) {
      rows.push({ key: "heard", start: 0, value: heard, bad: turn.heard_mismatch, missing: "not reported by the caller" });
      if (has(heard) && has(platform)) {
        rows.push({ key: "playout", start: Math.min(platform, heard), value: Math.abs(heard - platform), bad: turn.heard_mismatch,
                    text: (heard >= platform ? "+" : "−") + ms(Math.abs(heard - platform)) });
      }
    }
    const ends = rows.map((r) => r.start + (r.value || 0)).concat(rows.map((r) => r.start + (budgets[r.key] || 0)).filter((v, i) => rows[i].value !== null && rows[i].value !== undefined));
    const { ticks: axisTicks, top: max } = Live.niceTicks(Math.max(...ends, budgets.e2e) * 1.04, 6);
    const W = 720, rowH = 24, top = 6, labelW = 130, right = 84;
    const H = top + rows.length * rowH + 22;
    const x = (v) => labelW + (W - labelW - right) * (v / max);
    const axis = axisTicks.concat(axisTicks.at(-1) < max ? [max] : []).map((v) => svg("g", {},
      svg("line", { x1: x(v), x2: x(v), y1: top, y2: H - 18, class: "chart-grid" }),
      svg("text", { x: x(v), y: H - 5, "text-anchor": "middle", class: "chart-text" }, ms(v))));
    const bars = rows.map((r, i) => {
      const y0 = top + i * rowH;
      const has = r.value !== null && r.value !== undefined;
      const bad = breaches.has(r.key) || Boolean(r.bad);
      const budget = budgets[r.key];
      return svg("g", { "data-stage": r.key, "data-breached": bad ? "1" : "0" },
        svg("text", { x: 0, y: y0 + 15, class: "chart-text strong" }, SHORT[r.key] || LABELS[r.key]),
        has ? svg("rect", { x: x(r.start), y: y0 + 5, width: Math.max(2, x(r.start + r.value) - x(r.start)), height: 13, rx: 2,
          fill: bad ? "var(--bad)" : `var(--s-${r.key})` },
          svg("title", {}, `${LABELS[r.key]}: ${ms(r.value)} (budget ${ms(budget)})`)) : null,
        has && budget ? svg("line", { x1: x(r.start + budget), x2: x(r.start + budget), y1: y0 + 1, y2: y0 + 22, class: bad ? "budget bad" : "budget" },
          svg("title", {}, `budget ${ms(budget)}`)) : null,
        svg("text", { x: has ? x(Math.max(r.start + r.value, r.start + (budget || 0))) + 6 : x(0) + 4, y: y0 + 15,
          class: bad ? "chart-text bad" : "chart-text" }, has ? (r.text || ms(r.value)) + (bad ? (r.bad ? " mismatch" : " over") : "") : (r.missing || "not measured")));
    });
    const title = el("div", { class: "waterfall-title" },
      `Turn ${turn.index}`, turn.interrupted ? ` · interrupted (${turn.interrupt_source})` : "",
      breaches.size ? ` · over budget: ${[...breaches].map((k) => SHORT[k] || k).join(", ")}` : " · within budget",
      turn.heard_mismatch ? " · caller-heard gap mismatch" : "");
    const legend = el("div", { class: "legend" },
      el("span", {}, el("i", { style: "background: var(--bad)" }), "over budget"),
      el("span", {}, el("i", { style: "border-top: 2px dashed var(--muted); height: 0; width: 12px" }), "budget"));
    box.replaceChildren(title, svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Waterfall of turn ${turn.index}` }, axis, bars), legend, heardParts(turn));
    box.dataset.turn = turn.index;
  }

  // Where the caller-heard gap went: the platform's stages as measured, what of its e2e they
  // leave (negative: the stages overlap), and the playout/transport rest beyond the e2e.
  function heardParts(turn) {
    const heard = turn.heard_gap_ms, platform = platformGap(turn), st = turn.stages_ms;
    if (!has(heard)) return el("p", { class: "heard-parts", dataset: { heard: "none" } }, turn.user_text ? "Caller-heard gap: not reported." : "");
    const parts = SEQUENTIAL.filter((k) => has(st[k]));
    const sum = parts.reduce((total, k) => total + st[k], 0);
    const signed = (v) => (v < 0 ? "−" : "") + ms(Math.abs(v));
    return el("p", { class: "heard-parts", dataset: { heard: String(heard), mismatch: turn.heard_mismatch ? "1" : "0" } },
      el("b", {}, `Caller heard ${ms(heard)}`), " = ",
      parts.map((k) => `${SHORT[k]} ${ms(st[k])}${k === "eou" && has(st.stt) ? ` (STT final transcript at ${ms(st.stt)})` : ""} + `).join(""),
      has(platform) ? `other platform time ${signed(platform - sum)} + ` : "",
      el("span", { class: turn.heard_mismatch ? "bad" : "" },
        has(platform) ? `playout/transport ${signed(heard - platform)}` : "playout/transport (no platform e2e to compare)"),
      turn.heard_mismatch ? el("span", { class: "bad" }, " · beyond the tolerance") : "",
      has(turn.heard_barge_in_ms) ? ` · barge-in: the agent went on ${ms(turn.heard_barge_in_ms)} over the caller` : "");
  }

  // --- transcript ---------------------------------------------------------------------
  function agentText(t) {
    if (!t.interrupted) return [el("span", {}, t.generated_text || t.heard_text || "")];
    const heard = t.heard_text || "";
    const generated = t.generated_text || "";
    if (generated.startsWith(heard)) {
      return [el("span", { class: "heard" }, heard), el("span", { class: "unheard", title: "generated, not heard" }, generated.slice(heard.length))];
    }
    return [el("span", { class: "heard" }, heard), " ", el("span", { class: "unheard", title: "generated, not heard" }, generated)];
  }

  function turnItem(t) {
    const selected = (state.selected ?? turnList().at(-1)?.index) === t.index;
    const breaches = t.breaches || [];
    return el("li", { dataset: { turn: t.index, interrupted: t.interrupted ? "1" : "0" }, class: selected ? "selected" : null, onclick: () => select(t.index) },
      el("div", { class: "who" }, `Turn ${t.index}`, el("br"), clock(t.started_at || t.created_at)),
      el("div", {},
        t.user_text ? el("div", { class: "caller" }, el("span", { class: "muted small" }, "Caller · "), t.user_text) : null,
        el("div", { class: "agent" }, el("span", { class: "muted small" }, "Agent · "), agentText(t)),
        el("div", { class: "meta" },
          el("span", { class: "tag " + (breaches.includes("e2e") ? "bad" : "") }, "e2e " + ms(t.stages_ms.e2e)),
          has(t.heard_gap_ms) ? el("span", { class: "tag " + (t.heard_mismatch ? "bad" : ""), dataset: { heard: t.heard_gap_ms } },
            "heard " + ms(t.heard_gap_ms) + (t.heard_mismatch ? " · mismatch" : "")) : null,
          t.interrupted ? el("span", { class: "tag warn" }, "interrupted · " + t.interrupt_source) : null,
          breaches.filter((b) => b !== "e2e").map((b) => el("span", { class: "tag bad" }, (SHORT[b] || b) + " over")),
          (t.tool_calls || []).map((c) => el("span", { class: "tag " + (c.status === "ok" || c.status === "succeeded" ? "ok" : c.status ? "warn" : "") },
            `tool ${c.name} · ${c.status || "?"}${c.replayed ? " · replayed" : ""}${c.latency_ms != null ? " · " + ms(c.latency_ms) : ""}`)),
          t.error ? el("span", { class: "tag bad", title: t.error }, "error") : null)));
  }

  function renderTranscript() {
    const list = document.getElementById("transcript");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const turns = turnList();
    list.replaceChildren(...(turns.length ? turns.map(turnItem) : [el("li", { class: "empty" }, "Nothing said yet.")]));
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  // --- timeline -----------------------------------------------------------------------
  function describe(ev) {
    const p = ev.payload || {};
    const t = ev.type;
    if (t === "session.state_changed") return { kind: "state", what: `${p.from} → ${p.to}`, detail: p.reason };
    if (t === "session.created") return { kind: "state", what: "session created", detail: p.agent || "" };
    const stale = p.stale ? " · an older connection (ignored)" : "";
    if (t === "caller.joined") return { kind: "join", what: "caller joined", detail: (p.connection || p.identity || "") + stale };
    if (t === "caller.dtmf") return { kind: "other", what: "keypad", detail: p.digits || "" };
    if (t === "caller.hung_up") return { kind: "leave", what: "caller hung up", detail: "" };
    if (t === "caller.ringing") return { kind: "state", what: "ringing", detail: "the callee's phone" };
    if (t === "caller.not_answered") return { kind: "leave", what: "not answered", detail: "" };
    if (t === "call.outcome") return { kind: p.outcome === "answered" ? "join" : "error", what: p.outcome === "answered" ? "callee answered" : "call " + String(p.outcome || "").replace(/_/g, " "), detail: p.ringing_ms != null ? "after " + ms(p.ringing_ms) + " ringing" : (p.sip_status ? "SIP " + p.sip_status : "") };
    if (t === "call.transfer") return { kind: "tool", what: "transfer requested", detail: `to ${p.to || "?"}${p.reason ? " · " + p.reason : ""}` };
    if (t === "call.transferred") return { kind: "leave", what: "caller transferred", detail: "" };
    if (t === "staff.listening") return { kind: "join", what: `${p.user || "staff"} listening in`, detail: "hidden, subscribe-only" };
    if (t === "staff.whisper") return { kind: "other", what: `${p.user || "staff"} whispered`, detail: p.text || "" };
    if (t === "agent.supervisor_note") return { kind: "other", what: "agent took the whisper", detail: "in its context for the next reply" };
    if (t === "caller.left") return { kind: "leave", what: "caller left", detail: (p.reason || p.connection || "") + stale };
    if (t === "agent.joined") return { kind: "join", what: "agent joined", detail: `${p.identity || ""}${p.source ? " (" + p.source + ")" : ""}` };
    if (t === "agent.left") return { kind: "leave", what: "agent left", detail: p.reason || p.identity || "" };
    if (t === "agent.lost") return { kind: "error", what: "agent lost", detail: `${p.identity || ""} · ${p.reason || ""}` };
    if (t === "agent.dispatch_requested") return { kind: "state", what: `agent dispatched${p.attempt > 1 ? " (attempt " + p.attempt + ")" : ""}`, detail: p.reason || p.error || p.mode || "" };
    if (t === "agent.join_timeout") return { kind: "error", what: "agent did not join", detail: `after ${p.waited_s} s (attempt ${p.attempt})` };
    if (t === "agent.unavailable") return { kind: "error", what: "no agent available", detail: `${p.attempts} dispatches, none joined` };
    if (t.startsWith("participant.")) return { kind: t.endsWith("joined") ? "join" : "leave", what: t.replace(/^participant\.participant_/, "participant "), detail: p.identity || "" };
    if (t === "session.reconnect") return { kind: "reconnect", what: "reconnect", detail: `#${p.reconnect_count ?? "?"} from ${p.source || "?"}` };
    if (t === "interrupt.requested") return { kind: "interrupt", what: "interrupt requested", detail: p.source };
    if (t === "agent.speech_interrupted") return { kind: "interrupt", what: `agent interrupted (turn ${p.turn})`, detail: `${p.source || ""}${p.heard_text ? " · heard: " + p.heard_text : ""}` };
    if (t === "tool.called") return { kind: "tool", what: `tool ${p.name}`, detail: `${p.status || "?"}${p.replayed ? " · replayed" : ""}${p.latency_ms != null ? " · " + ms(p.latency_ms) : ""}${p.error ? " · " + p.error : ""}` };
    if (t === "turn.heard") return { kind: "turn", what: `turn ${p.index} heard`, detail: `${ms(p.heard_gap_ms)} by the caller${p.difference_ms != null ? " · " + (p.difference_ms >= 0 ? "+" : "−") + ms(Math.abs(p.difference_ms)) + " vs e2e" : ""}${p.mismatch ? " · mismatch" : ""}` };
    if (t === "turn.completed") return { kind: "turn", what: `turn ${p.index}`, detail: `e2e ${ms(p.e2e_ms)}${p.interrupted ? " · interrupted" : ""}${(p.breaches || []).length ? " · over: " + p.breaches.join(", ") : ""}` };
    if (t.includes("failover") || t.startsWith("provider.")) return { kind: "failover", what: t.replace(/[._]/g, " "), detail: [p.stage, p.from, p.to && "→ " + p.to, p.error].filter(Boolean).join(" ") };
    if (t.includes("error") || t.includes("failed")) return { kind: "error", what: t.replace(/[._]/g, " "), detail: p.error || p.source || "" };
    return { kind: "other", what: t.replace(/[._]/g, " "), detail: Object.entries(p).slice(0, 3).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ") };
  }

  function eventItem(ev) {
    const d = describe(ev);
    return el("li", { dataset: { seq: ev.seq, kind: d.kind, type: ev.type } },
      el("span", { class: "dot" }), el("span", { class: "when" }, clock(ev.created_at)),
      el("span", { class: "what" }, el("b", {}, d.what), d.detail ? el("span", { class: "detail" }, " · " + d.detail) : null));
  }

  function renderTimeline() {
    const list = document.getElementById("timeline");
    list.replaceChildren(...state.events.slice().reverse().map(eventItem));
    document.getElementById("seq-label").textContent = `${state.events.length} events · seq ${state.lastSeq}`;
  }

  // --- report -------------------------------------------------------------------------
  function renderReport() {
    const card = document.getElementById("report-card");
    const r = state.report;
    if (!r || typeof r !== "object") { card.hidden = true; return; }
    card.hidden = false;
    const scalars = Object.entries(r).filter(([, v]) => v === null || typeof v !== "object");
    const nested = Object.entries(r).filter(([, v]) => v !== null && typeof v === "object");
    const label = (k) => k.replace(/_/g, " ");
    const value = (k, v) => (typeof v === "number" && k.endsWith("_ms") ? ms(v) : typeof v === "number" ? Number(v.toFixed(3)) : String(v ?? "–"));
    document.getElementById("report").replaceChildren(el("div", { class: "report" },
      el("dl", {}, scalars.map(([k, v]) => [el("dt", {}, label(k)), el("dd", {}, value(k, v))]),
        nested.map(([k, v]) => [el("dt", {}, label(k)), el("dd", {}, Array.isArray(v) || Object.values(v).some((x) => x !== null && typeof x === "object")
          ? el("pre", {}, JSON.stringify(v, null, 2))
          : Object.entries(v).map(([kk, vv]) => el("span", { class: "tag", style: "margin-right:6px" }, `${label(kk)} ${value(kk, vv)}`)))]))));
  }

  async function loadReport() {
    try {
      const res = await fetch(`/dashboard/api/sessions/${state.session.id}`, { credentials: "same-origin" });
      if (res.ok) { state.report = (await res.json()).report; renderReport(); }
    } catch (e) { /* shown on the next page load */ }
  }

  // --- state changes ------------------------------------------------------------------
  function select(index) {
    const turns = turnList();
    state.selected = turns.length && index === turns[turns.length - 1].index ? null : index;
    renderStrip(); renderWaterfall(); renderTranscript();
  }

  function renderAll() { renderFacts(); renderStrip(); renderWaterfall(); renderTranscript(); renderTimeline(); renderReport(); }

  function upsertTurn(turn) { state.turns.set(turn.index, turn); }

  function applyEvent(ev) {
    state.events.push(ev);
    if (state.events.length > 2000) state.events.splice(0, state.events.length - 2000);
    state.lastSeq = ev.seq;
    if (ev.type === "session.report_ready") loadReport();
  }

  function requestResync() {
    if (state.resyncing) return;
    state.resyncing = true;
    socket.send({ type: "resync", session_id: state.session.id, after_seq: state.lastSeq });
  }

  function updateSession(row) { if (row && row.seq >= state.session.seq) state.session = row; }

  function onMessage(msg) {
    if (msg.type === "snapshot") {
      state.session = msg.session; state.budgets = msg.budgets_ms; state.report = msg.report;
      state.turns = new Map(msg.turns.map((t) => [t.index, t]));
      state.events = msg.events.slice();
      state.lastSeq = msg.events.length ? msg.events[msg.events.length - 1].seq : 0;
      renderAll();
    } else if (msg.type === "event.added") {
      const ev = msg.event;
      if (ev.seq <= state.lastSeq) return;               // already have it
      if (ev.seq > state.lastSeq + 1) { requestResync(); return; } // a hole: fetch it from the DB
      applyEvent(ev);
      renderTimeline();
    } else if (msg.type === "turn.completed" || msg.type === "turn.heard") {
      upsertTurn(msg.turn);
      renderStrip(); renderWaterfall(); renderTranscript();
    } else if (msg.type === "session.updated") {
      updateSession(msg.session);
      renderFacts();
    } else if (msg.type === "resync") {
      state.resyncing = false;
      msg.events.filter((e) => e.seq > state.lastSeq).forEach(applyEvent);
      msg.turns.forEach(upsertTurn);
      updateSession(msg.session);
      renderAll();
      // A resync returns at most one page of events: ask for the next until complete.
      if (msg.complete === false) requestResync();
    }
  }

  const socket = new Live.LiveSocket(config.wsSession, {
    onMessage,
    // The page already holds everything up to lastSeq (rendered with it, or received):
    // every (re)connect asks only for what came after.
    query: () => `after_seq=${state.lastSeq}`,
  });

  renderAll();
  setInterval(() => {
    const node = document.getElementById("duration");
    if (node && LIVE.has(state.session.state)) node.textContent = duration(sessionSeconds(state.session));
  }, 1000);

  // --- step in: listen in (hidden, subscribe-only) and whisper (docs/supervisor.md) -----
  function csrf() {
    const input = document.querySelector("#step-in input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }
  async function stepIn(action, body) {
    const res = await fetch(`/dashboard/api/sessions/${state.session.id}/${action}`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() },
      body: JSON.stringify(body || {}),
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(data.detail || data.error || `HTTP ${res.status}`);
    return data;
  }
  let listening = null;
  async function toggleListen() {
    const button = document.getElementById("listen");
    const label = document.getElementById("listen-state");
    if (listening) {
      await listening.disconnect();
      listening = null;
      button.textContent = "Listen in";
      label.textContent = "";
      return;
    }
    button.disabled = true;
    try {
      const grant = await stepIn("listen");
      const LK = window.LivekitClient;
      const room = new LK.Room();
      room.on(LK.RoomEvent.TrackSubscribed, (track) => {
        if (track.kind === "audio") document.getElementById("listen-sink").appendChild(track.attach());
      });
      room.on(LK.RoomEvent.Disconnected, () => { listening = null; button.textContent = "Listen in"; label.textContent = "stopped"; });
      await room.connect(grant.url, grant.token, { autoSubscribe: true });
      listening = room;
      button.textContent = "Stop listening";
      label.textContent = "listening (hidden)";
    } catch (err) {
      label.textContent = "could not listen: " + err.message;
    } finally {
      button.disabled = false;
    }
  }
  function setupStepIn() {
    const card = document.getElementById("step-in");
    if (!card) return;
    const refresh = () => { card.hidden = !LIVE.has(state.session.state); };
    refresh();
    setInterval(refresh, 1000);
    const listen = document.getElementById("listen");
    if (listen) listen.addEventListener("click", toggleListen);
    const form = document.getElementById("whisper-form");
    if (form) form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const input = document.getElementById("whisper-text");
      const label = document.getElementById("whisper-state");
      try {
        await stepIn("whisper", { text: input.value });
        label.textContent = "sent: the agent reads it before its next reply";
        input.value = "";
      } catch (err) {
        label.textContent = "not sent: " + err.message;
      }
    });
  }
  setupStepIn();
})();
