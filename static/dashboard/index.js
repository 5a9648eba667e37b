/* /dashboard/: the live sessions table, KPI tiles and per-agent / per-prompt breakdowns. */
"use strict";

(() => {
  const { el, ms, pct, num, duration, sessionSeconds, rangeBar } = Live;
  const config = Live.readJson("dashboard-config");
  const LIVE = new Set(["created", "active", "reconnecting"]);
  const RECENT_LIMIT = 50;
  const rows = new Map();     // session id -> summary row (the `session.updated` shape)
  const trs = new Map();      // session id -> <tr>
  let windowKey = config.window;
  let kpiTimer = null;

  const tbody = document.querySelector("#sessions tbody");
  const budgetsOf = (slug) => (config.budgets && config.budgets[slug]) || config.defaultBudgets;

  function latencyCell(row) {
    const v = row.last_e2e_ms;
    const budget = budgetsOf(row.agent).e2e;
    const cls = v === null || v === undefined ? "lat" : v > budget ? "lat bad" : v > budget * 0.8 ? "lat warn" : "lat";
    return el("span", { class: cls, title: `budget ${ms(budget)}` }, ms(v));
  }

  function cells(row) {
    const live = LIVE.has(row.state);
    return [
      el("td", {}, el("a", { href: config.sessionUrl.replace("{id}", row.id), class: "mono", title: row.id }, row.id.slice(0, 8))),
      el("td", { title: row.agent }, row.agent_name || row.agent || "–"),
      el("td", {}, row.prompt_version ? el("span", { class: "pill" }, "v" + row.prompt_version) : "–"),
      el("td", { class: "mono" }, row.caller_id || "–"),
      el("td", {}, el("span", { class: "badge " + row.state, title: row.end_reason || null }, row.state)),
      el("td", { class: "num", dataset: { duration: live ? "live" : "" } }, duration(sessionSeconds(row))),
      el("td", { class: "num" }, row.turns),
      el("td", { class: "num" }, latencyCell(row)),
      el("td", { class: "num" }, row.interrupts),
      el("td", { class: "num" }, row.reconnects),
    ];
  }

  function ordered() {
    const all = [...rows.values()];
    const byNewest = (a, b) => (b.created_at || "").localeCompare(a.created_at || "");
    const live = all.filter((r) => LIVE.has(r.state)).sort(byNewest);
    const done = all.filter((r) => !LIVE.has(r.state)).sort(byNewest).slice(0, RECENT_LIMIT);
    return live.concat(done);
  }

  function renderTable() {
    const list = ordered();
    const keep = new Set(list.map((r) => r.id));
    for (const [id, tr] of trs) if (!keep.has(id)) { tr.remove(); trs.delete(id); }
    list.forEach((row, i) => {
      let tr = trs.get(row.id);
      if (!tr) { tr = el("tr", { dataset: { session: row.id } }); trs.set(row.id, tr); }
      if (tr.dataset.seq !== String(row.seq) || tr.dataset.state !== row.state) {
        tr.replaceChildren(...cells(row));
        tr.dataset.seq = row.seq;
        tr.dataset.state = row.state;
        tr.classList.toggle("final", !LIVE.has(row.state));
      }
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    document.getElementById("sessions-empty").hidden = list.length > 0;
    const live = list.filter((r) => LIVE.has(r.state)).length;
    document.getElementById("live-summary").textContent =
      `${live} live session${live === 1 ? "" : "s"} · ${list.length - live} recent`;
  }

  function upsert(row) {
    const old = rows.get(row.id);
    if (old && old.seq > row.seq) return false; // an older message arriving late
    rows.set(row.id, row);
    return true;
  }

  function flash(id) {
    const tr = trs.get(id);
    if (!tr) return;
    tr.classList.remove("flash");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("flash");
  }

  // --- KPIs ---------------------------------------------------------------------------
  function tile(label, value, sub, foot, opts = {}) {
    return el("div", { class: "tile " + (opts.cls || ""), dataset: { kpi: opts.key } },
      el("div", { class: "tile-label" }, el("span", {}, label), opts.hint ? el("span", {}, opts.hint) : null),
      el("div", { class: "tile-value" }, value, sub ? el("span", { class: "sub" }, sub) : null),
      opts.chart || null,
      el("div", { class: "tile-foot" }, foot));
  }

  function renderKpis(k) {
    const o = k.overall;
    const b = config.defaultBudgets;
    const breachCls = o.breach_rate === null ? "" : o.breach_rate > 0.1 ? "bad" : o.breach_rate > 0 ? "warn" : "";
    const max = (ref, v) => Math.max(ref * 1.5, v || 0);
    document.getElementById("kpis").replaceChildren(
      tile("End-to-end p50", ms(o.e2e_p50_ms), "p95 " + ms(o.e2e_p95_ms), `${o.turns} turns · budget ${ms(b.e2e)}`,
           { key: "e2e", cls: o.e2e_p95_ms > b.e2e ? "warn" : "", chart: rangeBar(o.e2e_p50_ms, o.e2e_p95_ms, b.e2e, max(b.e2e, o.e2e_p95_ms)) }),
      tile("First audio (TTFA) p50", ms(o.ttfa_p50_ms), "p95 " + ms(o.ttfa_p95_ms), `budget ${ms(b.ttfa)}`,
           { key: "ttfa", cls: o.ttfa_p95_ms > b.ttfa ? "warn" : "", chart: rangeBar(o.ttfa_p50_ms, o.ttfa_p95_ms, b.ttfa, max(b.ttfa, o.ttfa_p95_ms)) }),
      tile("Interrupts / session", num(o.interrupts_per_session), null, `${o.interrupts} in ${o.sessions} sessions`, { key: "interrupts" }),
      tile("Reconnects / session", num(o.reconnects_per_session), null, `${o.reconnects} reconnects`, { key: "reconnects" }),
      tile("Budget breach rate", pct(o.breach_rate), null, `${o.breached_turns} of ${o.turns} turns over a budget`, { key: "breaches", cls: breachCls }),
      tile("Sessions", o.sessions, null, `in the last ${k.window}`, { key: "sessions", hint: k.window }),
    );
    renderBreakdown("by-agent", k.by_agent, (r) => r.agent_name);
    renderBreakdown("by-prompt", k.by_prompt, (r) => [r.agent_name + " ", el("span", { class: "pill" }, "v" + r.prompt_version)]);
  }

  function renderBreakdown(id, list, name) {
    const box = document.getElementById(id);
    if (!list.length) { box.replaceChildren(el("p", { class: "empty" }, "No sessions in this window.")); return; }
    const maxV = Math.max(config.defaultBudgets.e2e * 1.2, ...list.map((r) => r.e2e_p95_ms || 0));
    box.replaceChildren(el("table", { class: "bars" },
      el("thead", {}, el("tr", {},
        el("th", {}, "Name"), el("th", { class: "num" }, "Sessions"), el("th", { class: "num" }, "Turns"),
        el("th", { class: "num" }, "e2e p50"), el("th", { class: "num" }, "p95"), el("th", {}, ""),
        el("th", { class: "num" }, "TTFA p95"), el("th", { class: "num" }, "Int./sess."), el("th", { class: "num" }, "Breaches"))),
      el("tbody", {}, list.map((r) => el("tr", { dataset: { agent: r.agent, prompt: r.prompt_version || "" } },
        el("td", {}, name(r)), el("td", { class: "num" }, r.sessions), el("td", { class: "num" }, r.turns),
        el("td", { class: "num" }, ms(r.e2e_p50_ms)), el("td", { class: "num" }, ms(r.e2e_p95_ms)),
        el("td", { class: "chart" }, rangeBar(r.e2e_p50_ms, r.e2e_p95_ms, budgetsOf(r.agent).e2e, maxV)),
        el("td", { class: "num" }, ms(r.ttfa_p95_ms)), el("td", { class: "num" }, num(r.interrupts_per_session)),
        el("td", { class: "num" }, pct(r.breach_rate)))))));
  }

  async function loadKpis() {
    clearTimeout(kpiTimer);
    kpiTimer = null;
    try {
      const res = await fetch(`${config.kpisUrl}?window=${encodeURIComponent(windowKey)}`, { credentials: "same-origin" });
      if (res.ok) renderKpis(await res.json());
    } catch (e) { /* the next turn or the periodic refresh tries again */ }
  }
  // Many turns per second must not mean many KPI queries per second.
  const scheduleKpis = () => { if (!kpiTimer) kpiTimer = setTimeout(loadKpis, 1500); };

  document.querySelectorAll("#window-picker button").forEach((btn) => btn.addEventListener("click", () => {
    windowKey = btn.dataset.window;
    document.querySelectorAll("#window-picker button").forEach((b) => b.setAttribute("aria-pressed", String(b === btn)));
    history.replaceState(null, "", `?window=${windowKey}`);
    loadKpis();
  }));

  // --- live stream --------------------------------------------------------------------
  const socket = new Live.LiveSocket(config.wsDashboard, {
    onMessage(msg) {
      if (msg.type === "snapshot") {
        // A fresh snapshot after a reconnect is the whole truth: forget what it omits.
        rows.clear();
        msg.sessions.forEach(upsert);
        renderTable();
        loadKpis();
      } else if (msg.type === "session.updated") {
        if (upsert(msg.session)) renderTable();
        if (!LIVE.has(msg.session.state)) scheduleKpis();
      } else if (msg.type === "turn.completed") {
        flash(msg.session_id);
        scheduleKpis();
      }
    },
  });

  (Live.readJson("dashboard-rows") || []).forEach(upsert);
  renderTable();
  renderKpis(Live.readJson("dashboard-kpis"));
  setInterval(() => {
    for (const [id, tr] of trs) {
      const cell = tr.querySelector('[data-duration="live"]');
      if (cell) cell.textContent = duration(sessionSeconds(rows.get(id)));
    }
  }, 1000);
  setInterval(loadKpis, 20000);
  // Belt and braces: a full snapshot now and then repairs anything a dropped message hid.
  setInterval(() => socket.send({ type: "resync" }), 60000);
})();
