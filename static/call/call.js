// The browser call page: a thin client over livekit-client (window.LivekitClient).
// The server decides everything (session, room, token, dispatch); this script only
// joins the room, publishes the microphone, plays the agent, shows its state and
// captions, and forwards interrupts, reconnects and hang-ups. No framework, no build.
(function () {
  "use strict";

  const cfg = JSON.parse(document.getElementById("call-config").textContent);
  const LK = window.LivekitClient;
  const $ = (id) => document.getElementById(id);

  const RPC_TIMEOUT_MS = 2500; // the SDK clamps RPC timeouts to >= 8 s; we fall back sooner
  const REJOIN_DELAYS_MS = [0, 1500, 4000];
  const AGENT_POLL_MS = 3000;
  const MAX_CAPTION_LINES = 200;
  const AGENT_STATES = {
    initializing: "joining…", idle: "idle", listening: "listening",
    thinking: "thinking", speaking: "speaking",
  };

  // One call at a time: {sessionId, room, agentIdentity, agentState, ending, joinTimer, lastInterruptAt,
  // heard (the heard-latency meter, or null)}
  let call = null;
  // Rooms whose connect() succeeded: only their Disconnected event means "the call was lost".
  const joinedRooms = new WeakSet();

  // ---- small UI helpers ---------------------------------------------------------------
  function setConn(text, kind) {
    const pill = $("conn");
    pill.textContent = text;
    pill.dataset.kind = kind || "idle";
  }

  function notify(text, kind) {
    const box = $("notice");
    box.textContent = text;
    box.dataset.kind = kind || "info";
    box.hidden = !text;
  }

  function setAgentState(state, label) {
    const box = $("agent-state");
    box.dataset.state = state;
    $("agent-state-label").textContent = "Agent: " + (label || AGENT_STATES[state] || state);
    if (call) call.agentState = state;
  }

  // phase: idle | starting | connecting | live | failed | ending
  function setPhase(phase) {
    const inCall = phase !== "idle";
    const start = $("start");
    if (start) start.disabled = inCall;
    const agent = $("agent");
    if (agent) agent.disabled = inCall;
    $("interrupt").disabled = !["connecting", "live", "failed"].includes(phase);
    $("end").disabled = !["connecting", "live", "failed"].includes(phase);
    $("mute").disabled = phase !== "live";
    $("rejoin").hidden = phase !== "failed";
    if (!inCall) $("audio-unlock").hidden = true;
    const sid = $("session-id");
    sid.hidden = !call;
    sid.textContent = call ? "Session " + call.sessionId : "";
  }

  function describe(err) {
    if (err && err.apiCode) return err.message + " (" + err.apiCode + ")";
    return (err && err.message) || String(err);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(what + " timed out after " + ms + " ms")), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  // ---- the same-origin browser API (Django session + CSRF) ---------------------------
  function endpoint(name, sessionId, index) {
    return cfg.endpoints[name]
      .replace("{id}", encodeURIComponent(sessionId || ""))
      .replace("{index}", String(index));
  }

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : cfg.csrfToken;
  }

  async function api(name, sessionId, body, options) {
    const opts = options || {};
    let response;
    try {
      response = await fetch(endpoint(name, sessionId, opts.index), {
        method: opts.method || "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify(body || {}),
      });
    } catch (err) {
      throw new Error("the platform could not be reached (" + err.message + ")");
    }
    let data = null;
    try { data = await response.json(); } catch (_) { /* non-JSON error page */ }
    if (!response.ok) {
      const err = new Error((data && data.message) || "HTTP " + response.status);
      err.status = response.status;
      err.apiCode = data && data.code;
      throw err;
    }
    return data;
  }

  // ---- starting, joining, rejoining --------------------------------------------------
  async function startCall(event) {
    event.preventDefault();
    if (call) return;
    const slug = $("agent").value;
    // Made here, in the click, so that the browser lets its AudioContext run.
    const heard = heardMeter();
    $("heard").hidden = true;
    clearCaptions();
    notify("");
    setConn("Requesting a session…", "busy");
    setPhase("starting");
    let grant;
    try {
      grant = await api("sessions", null, { agent: slug, metadata: {} });
    } catch (err) {
      heardStop(heard);
      setConn("Not connected", "idle");
      setPhase("idle");
      notify("Could not start the call: " + describe(err), "error");
      return;
    }
    call = { sessionId: grant.session_id, room: null, agentIdentity: null, agentState: "idle",
             ending: false, joinTimer: null, lastInterruptAt: 0, heard: heard };
    heardRun(call);
    setPhase("connecting");
    await join(grant, false);
  }

  // Join the room with a grant; returns whether it worked. Failures are shown, never silent.
  async function join(grant, isRejoin) {
    const room = new LK.Room({
      adaptiveStream: false,
      dynacast: false,
      audioCaptureDefaults: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    wireRoom(room);
    call.room = room;
    setConn("Connecting to " + grant.url + "…", "busy");
    try {
      await room.connect(grant.url, grant.token, { autoSubscribe: true });
    } catch (err) {
      if (!call || call.ending || call.room !== room) return false; // hung up meanwhile
      call.room = null;
      room.removeAllListeners();
      showConnectError(err, grant.url);
      return false;
    }
    if (!call || call.room !== room) { room.disconnect(); return false; }
    joinedRooms.add(room);
    setConn("Connected", "ok");
    setPhase("live");
    notify(isRejoin ? "Reconnected: you are back in the call." : "", "ok");
    await publishMicrophone(room);
    room.remoteParticipants.forEach(onParticipant);
    if (!call.agentIdentity) waitForAgent();
    return true;
  }

  function showConnectError(err, url) {
    const R = LK.ConnectionErrorReason;
    let text;
    if (err && err.reason === R.NotAllowed) {
      text = "The LiveKit server at " + url + " refused the call token" +
        (err.status ? " (HTTP " + err.status + ")" : "") +
        ". It may have expired; choose Rejoin to get a fresh one.";
    } else if (err && err.reason === R.Timeout) {
      text = "The LiveKit server at " + url + " did not answer in time.";
    } else if (err && err.reason === R.Cancelled) {
      text = "The connection attempt was cancelled.";
    } else {
      text = "Could not connect to the LiveKit server at " + url + ": " + describe(err) +
        ". Check that the server is running and reachable from this browser.";
    }
    setConn("Connection failed", "error");
    setPhase("failed");
    $("audio-unlock").hidden = true;
    setAgentState("idle", "not connected");
    notify(text, "error");
  }

  async function publishMicrophone(room) {
    try {
      await room.localParticipant.setMicrophoneEnabled(true);
      setMuted(false);
      const mic = room.localParticipant.getTrackPublication(LK.Track.Source.Microphone);
      if (call && mic && mic.track) heardListen(call.heard, "mic", mic.track.mediaStreamTrack);
    } catch (err) {
      const why = err && err.name === "NotAllowedError" ? "permission was denied" : describe(err);
      notify("Your microphone could not be used (" + why + "), so the agent cannot hear you. " +
        "Allow microphone access for this site, then choose Rejoin.", "error");
      setPhase("failed");
    }
  }

  // The SDK's own reconnection comes first (Reconnecting/Reconnected). This runs when the
  // room is lost for good: ask the platform for a fresh token for the same session.
  async function rejoin() {
    if (!call || call.ending) return;
    if (call.room) { // e.g. Rejoin after a microphone failure: leave the old room first
      const old = call.room;
      call.room = null;
      old.disconnect();
    }
    setPhase("connecting");
    setConn("Rejoining…", "warn");
    notify("The connection to the call was lost. Rejoining with a fresh token…", "warn");
    let lastError = null;
    for (const delay of REJOIN_DELAYS_MS) {
      if (delay) await sleep(delay);
      if (!call || call.ending) return;
      let grant;
      try {
        grant = await api("reconnect", call.sessionId);
      } catch (err) {
        if (err.status === 404 || err.status === 409) {
          finishCall("This call has already ended on the platform (" + describe(err) + ").", "warn");
          return;
        }
        lastError = err;
        continue;
      }
      if (await join(grant, true)) return;
      lastError = null; // join() has shown its own reason
    }
    if (!call) return;
    setPhase("failed");
    if (lastError) {
      setConn("Disconnected", "error");
      notify("Could not rejoin the call: " + describe(lastError) + ". Try Rejoin again or end the call.", "error");
    }
  }

  function waitForAgent() {
    clearTimeout(call.joinTimer);
    setAgentState("initializing", "waiting to join…");
    const seconds = cfg.agentJoinTimeoutSeconds;
    call.joinTimer = setTimeout(() => {
      if (!call || call.agentIdentity || !call.room) return;
      setAgentState("missing", "has not joined");
      notify("The agent has not joined after " + seconds + " s. The platform is dispatching it again; " +
        "keep waiting, or end the call and try again later.", "warn");
      watchForUnavailableAgent(call);
    }, seconds * 1000);
  }

  // While no agent is in the room, ask the platform now and then: after its last dispatch
  // it fails the session (agent_unavailable), and the page says so instead of waiting on.
  async function watchForUnavailableAgent(watched) {
    while (call === watched && !watched.agentIdentity && !watched.ending) {
      await sleep(AGENT_POLL_MS);
      if (call !== watched || watched.agentIdentity) return;
      let detail;
      try {
        const response = await fetch(endpoint("session", watched.sessionId), { credentials: "same-origin" });
        if (!response.ok) continue;
        detail = await response.json();
      } catch (_) {
        continue; // the platform is unreachable for a moment: ask again
      }
      if (detail.state === "failed" || detail.state === "ended") {
        const why = detail.end_reason === "agent_unavailable"
          ? "No agent could take the call: the platform dispatched one several times and none joined " +
            "(is the agent worker running?)."
          : "The call ended on the platform (" + (detail.end_reason || detail.state) + ").";
        finishCall(why, "error");
        return;
      }
    }
  }

  // ---- room events --------------------------------------------------------------------
  function isAgent(p) {
    return p.isAgent || p.kind === LK.ParticipantKind.AGENT || p.identity.startsWith("agent-");
  }

  function onParticipant(p) {
    if (!call || !isAgent(p)) return;
    const wasMissing = call.agentState === "missing";
    call.agentIdentity = p.identity;
    clearTimeout(call.joinTimer);
    setAgentState(p.attributes["lk.agent.state"] || "initializing");
    if (wasMissing) notify("The agent joined.", "ok");
  }

  function wireRoom(room) {
    const E = LK.RoomEvent;
    room
      .on(E.ParticipantConnected, onParticipant)
      .on(E.ParticipantDisconnected, (p) => {
        if (!call || p.identity !== call.agentIdentity) return;
        call.agentIdentity = null;
        setAgentState("missing", "left the call");
        notify("The agent left the call. The platform is sending another one, which carries on " +
          "where this one stopped; or end the call.", "warn");
        watchForUnavailableAgent(call);
      })
      .on(E.ParticipantAttributesChanged, (changed, p) => {
        if (!call || !("lk.agent.state" in changed)) return;
        if (!call.agentIdentity && isAgent(p)) onParticipant(p);
        if (p.identity === call.agentIdentity) setAgentState(changed["lk.agent.state"]);
      })
      .on(E.TrackSubscribed, (track, publication, participant) => {
        if (track.kind !== LK.Track.Kind.Audio) return;
        $("audio-sink").appendChild(track.attach());
        if (call && isAgent(participant)) heardListen(call.heard, "agent", track.mediaStreamTrack);
      })
      .on(E.TrackUnsubscribed, (track) => track.detach().forEach((el) => el.remove()))
      .on(E.AudioPlaybackStatusChanged, () => {
        // Autoplay blocked: the browser needs one more click before it plays the agent.
        if (call && call.room === room) $("audio-unlock").hidden = room.canPlaybackAudio;
      })
      .on(E.ActiveSpeakersChanged, (speakers) => autoInterrupt(room, speakers))
      .on(E.MediaDevicesError, (err) => notify("Microphone problem: " + describe(err), "error"))
      .on(E.Reconnecting, () => {
        setConn("Reconnecting…", "warn");
        notify("The connection dropped. Reconnecting…", "warn");
      })
      .on(E.Reconnected, () => {
        setConn("Connected", "ok");
        notify("Reconnected.", "ok");
      })
      .on(E.Disconnected, (reason) => onDisconnected(room, reason));
    room.registerTextStreamHandler("lk.transcription", (reader, from) => showCaption(room, reader, from));
  }

  function onDisconnected(room, reason) {
    // Ignore old rooms, and failed connects (join() shows those).
    if (!call || call.room !== room || !joinedRooms.has(room)) return;
    call.room = null;
    clearTimeout(call.joinTimer);
    $("audio-sink").replaceChildren();
    const D = LK.DisconnectReason;
    if (call.ending || reason === D.CLIENT_INITIATED) return;
    if (reason === D.ROOM_DELETED || reason === D.ROOM_CLOSED || reason === D.PARTICIPANT_REMOVED) {
      endCall("The call was ended on the server.");
      return;
    }
    if (reason === D.DUPLICATE_IDENTITY) {
      setConn("Disconnected", "error");
      setPhase("failed");
      notify("This call was opened in another tab or window, so this page left it.", "warn");
      return;
    }
    rejoin();
  }

  // ---- captions -----------------------------------------------------------------------
  // Agent speech arrives as one stream of text deltas per segment; the caller's own speech
  // as a new stream per interim result (full text so far) with the same segment id. Showing
  // "the text of the latest stream of this segment" is right for both.
  function clearCaptions() {
    $("captions").replaceChildren();
  }

  function captionLine(segment, who) {
    const box = $("captions");
    let line = box.querySelector('[data-segment="' + CSS.escape(segment) + '"]');
    if (!line) {
      line = document.createElement("p");
      line.className = "caption interim";
      line.dataset.segment = segment;
      line.dataset.who = who;
      const name = document.createElement("span");
      name.className = "who";
      name.textContent = who === "you" ? "You" : "Agent";
      const text = document.createElement("span");
      text.className = "text";
      line.append(name, text);
      box.append(line);
      while (box.children.length > MAX_CAPTION_LINES) box.firstElementChild.remove();
    }
    return line;
  }

  async function showCaption(room, reader, from) {
    const attrs = reader.info.attributes || {};
    const who = from.identity === room.localParticipant.identity ? "you" : "agent";
    const line = captionLine(attrs["lk.segment_id"] || reader.info.id, who);
    const box = $("captions");
    let text = "";
    try {
      for await (const chunk of reader) {
        text += chunk;
        line.querySelector(".text").textContent = text;
        box.scrollTop = box.scrollHeight;
      }
    } catch (_) { /* stream cut by a disconnect: keep what arrived */ }
    if (who === "agent" || attrs["lk.transcription_final"] === "true") line.classList.remove("interim");
  }

  // ---- what the caller heard (docs/latency.md) -----------------------------------------
  // WebAudio analysers on the microphone and on the agent's track, sampled every 10 ms on
  // the page's clock. A caller utterance is the microphone above the threshold; the agent is
  // audible from its first sample above it, until a quiet spell of 300 ms. When the agent
  // starts after the caller's last loud moment, heard gap = that start − that moment (as
  // the simulated caller measures it: agents_app/runtime/simulator/heard.py). Not measured
  // when the agent was still audible as the caller stopped.
  // Pairing with a turn goes by time, not by order (a cough or a line the STT split would
  // shift an order): the stored caller turn whose start (the server's clock, placed on the
  // page's clock) falls between the caller's last loud moment and the agent being heard,
  // when exactly one does. Then PUT …/turns/{index}/heard, once per turn.
  const HEARD_THRESHOLD = 500 / 32768; // RMS ≈ −36 dBFS, the simulated caller's threshold
  const HEARD_SAMPLE_MS = 10;
  const HEARD_STEP_MAX_MS = 60; // samples further apart (a throttled background tab): start over
  const AGENT_QUIET_MS = 300;
  const HEARD_REPORT_MS = 2000;
  const HEARD_GIVE_UP_MS = 60000;
  const HEARD_MARGIN_MS = 250; // the turn's start vs the page's moments, beyond the clock error

  const pageNow = () => performance.timeOrigin + performance.now();

  // The server's clock − the page's: cfg.serverTimeMs was taken while the server made this
  // page, between the request's start and the response's first byte (navigation timing).
  const serverClock = (() => {
    const nav = performance.getEntriesByType("navigation")[0];
    if (!cfg.serverTimeMs || !nav || !nav.responseStart) return { offset: 0, error: 1000 };
    const sent = performance.timeOrigin + nav.requestStart;
    const answered = performance.timeOrigin + nav.responseStart;
    return { offset: cfg.serverTimeMs - (sent + answered) / 2, error: (answered - sent) / 2 };
  })();

  function heardMeter() {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    return { ctx: new Context(), inputs: {}, tick: null, report: null, lastTick: 0, stretch: null,
             utterance: null, pending: [], reported: new Set(), reporting: false };
  }

  // Listen to `which` ("mic" or "agent"): a MediaStreamTrack into an AnalyserNode.
  function heardListen(meter, which, mediaTrack) {
    if (!meter || !mediaTrack) return;
    const old = meter.inputs[which];
    if (old && old.track === mediaTrack) return;
    if (old) old.source.disconnect();
    const source = meter.ctx.createMediaStreamSource(new MediaStream([mediaTrack]));
    const analyser = meter.ctx.createAnalyser();
    analyser.fftSize = 512; // ≈ 10.7 ms at 48 kHz: one sample period
    source.connect(analyser);
    meter.inputs[which] = { track: mediaTrack, source, analyser, buf: new Float32Array(analyser.fftSize) };
  }

  function heardLoud(input) {
    if (!input) return false;
    input.analyser.getFloatTimeDomainData(input.buf);
    let sum = 0;
    for (const v of input.buf) sum += v * v;
    return Math.sqrt(sum / input.buf.length) >= HEARD_THRESHOLD;
  }

  function heardSample(meter) {
    const now = pageNow();
    if (meter.lastTick && now - meter.lastTick > HEARD_STEP_MAX_MS) meter.utterance = null;
    meter.lastTick = now;
    if (heardLoud(meter.inputs.agent)) {
      const last = meter.stretch;
      if (last && now - last.end < AGENT_QUIET_MS) last.end = now;
      else {
        heardAgentStarted(meter, now);
        meter.stretch = { start: now, end: now };
      }
    }
    if (heardLoud(meter.inputs.mic)) {
      const u = meter.utterance;
      if (u) u.end = now;
      else {
        const s = meter.stretch;
        meter.utterance = { start: now, end: now, over: s && now <= s.end + AGENT_QUIET_MS ? s : null };
      }
    }
  }

  function heardAgentStarted(meter, now) {
    const u = meter.utterance;
    meter.utterance = null;
    if (!u) return; // the agent speaks with no caller speech before it (the greeting)
    if (meter.stretch && meter.stretch.end >= u.end) return; // still audible as the caller stopped
    meter.pending.push({
      spokeUntil: u.end,
      heardAt: now,
      gapMs: Math.round((now - u.end) * 10) / 10,
      bargeInMs: u.over ? Math.round(Math.max(0, u.over.end - u.start) * 10) / 10 : null,
    });
  }

  function heardRun(watched) {
    const meter = watched.heard;
    if (!meter) return;
    if (meter.ctx.state === "suspended") meter.ctx.resume().catch(() => {});
    meter.tick = setInterval(() => heardSample(meter), HEARD_SAMPLE_MS);
    meter.report = setInterval(() => heardReport(watched), HEARD_REPORT_MS);
  }

  function heardStop(meter) {
    if (!meter) return;
    clearInterval(meter.tick);
    clearInterval(meter.report);
    meter.ctx.close().catch(() => {});
  }

  async function heardReport(watched) {
    const meter = watched && watched.heard;
    if (!meter || meter.reporting || !meter.pending.length) return;
    meter.reporting = true;
    try {
      const response = await fetch(endpoint("session", watched.sessionId), { credentials: "same-origin" });
      if (!response.ok) return;
      const turns = ((await response.json()).turns || []).filter(
        (t) => t.user_text && t.started_at && t.heard_gap_ms == null && !meter.reported.has(t.index));
      const margin = HEARD_MARGIN_MS + serverClock.error;
      const waiting = [];
      for (const m of meter.pending) {
        const matches = turns.filter((t) => {
          const at = Date.parse(t.started_at) - serverClock.offset;
          return at >= m.spokeUntil - margin && at <= m.heardAt + margin;
        });
        if (matches.length === 1) {
          const index = matches[0].index;
          meter.reported.add(index);
          try {
            await api("heard", watched.sessionId, { heard_gap_ms: m.gapMs, barge_in_ms: m.bargeInMs },
                      { method: "PUT", index: index });
            heardShow(index, m.gapMs);
          } catch (_) { /* 409: already reported; anything else: the figure is lost, the call goes on */ }
        } else if (!matches.length && pageNow() - m.heardAt < HEARD_GIVE_UP_MS) {
          waiting.push(m); // the turn is stored when the agent's answer ends
        } // several turns in the window: ambiguous, reported nowhere rather than guessed
      }
      meter.pending = waiting;
    } catch (_) {
      /* the platform is unreachable for a moment: try again at the next report */
    } finally {
      meter.reporting = false;
    }
  }

  function heardShow(index, gapMs) {
    const box = $("heard");
    if (!box) return;
    box.hidden = false;
    box.dataset.turn = String(index);
    box.textContent = "You heard the agent " + (gapMs / 1000).toFixed(2) + " s after you stopped";
  }

  // ---- controls -----------------------------------------------------------------------
  // Interrupt through the agent's `interrupt` RPC; if that fails or is slow, through the
  // platform API, which relays it to the agent job over the channel layer.
  async function interrupt(source) {
    if (!call) return;
    const now = Date.now();
    if (now - call.lastInterruptAt < 1000) return; // one per second is plenty
    call.lastInterruptAt = now;
    const room = call.room;
    if (room && call.agentIdentity && room.state === LK.ConnectionState.Connected) {
      try {
        await withTimeout(room.localParticipant.performRpc({
          destinationIdentity: call.agentIdentity,
          method: "interrupt",
          payload: JSON.stringify({ source: source }),
        }), RPC_TIMEOUT_MS, "interrupt RPC");
        if (source === "button") notify("Interrupted the agent.", "ok");
        return;
      } catch (_) { /* fall back to the API below */ }
    }
    if (!call) return;
    try {
      await api("interrupt", call.sessionId, { source: source });
      notify("Interrupt sent through the platform (the agent could not be reached directly).", "info");
    } catch (err) {
      notify("Could not interrupt the agent: " + describe(err), "error");
    }
  }

  function autoInterrupt(room, speakers) {
    if (!call || call.room !== room || !$("auto-interrupt").checked) return;
    if (call.agentState !== "speaking") return;
    if (speakers.some((p) => p.identity === room.localParticipant.identity)) interrupt("speech");
  }

  function setMuted(muted) {
    const button = $("mute");
    button.textContent = muted ? "Unmute" : "Mute";
    button.setAttribute("aria-pressed", String(muted));
  }

  async function toggleMute() {
    if (!call || !call.room) return;
    const lp = call.room.localParticipant;
    const enable = !lp.isMicrophoneEnabled;
    try {
      await lp.setMicrophoneEnabled(enable);
      setMuted(!enable);
    } catch (err) {
      notify("Could not change the microphone: " + describe(err), "error");
    }
  }

  // Hang up: tell the platform (which tells the agent), then leave the room.
  async function endCall(reasonText) {
    if (!call || call.ending) return;
    call.ending = true;
    setPhase("ending");
    setConn("Ending…", "busy");
    let problem = null;
    await heardReport(call); // what is still waiting for its turn, if the turn is stored by now
    try {
      await api("end", call.sessionId);
    } catch (err) {
      if (err.status !== 409) problem = err; // 409: already ended, which is what we want
    }
    const room = call.room;
    if (room) await room.disconnect();
    finishCall(problem
      ? "You left the call, but the platform could not record the end: " + describe(problem)
      : (typeof reasonText === "string" ? reasonText : "Call ended."), problem ? "warn" : "info");
  }

  function finishCall(text, kind) {
    if (call) {
      heardStop(call.heard);
      clearTimeout(call.joinTimer);
      if (call.room) call.room.disconnect();
    }
    call = null;
    $("audio-sink").replaceChildren();
    setPhase("idle");
    setConn("Not connected", "idle");
    setAgentState("idle", "not in a call");
    notify(text, kind);
  }

  // Closing the tab ends the call too; keepalive lets the request outlive the page.
  window.addEventListener("pagehide", () => {
    if (!call || call.ending) return;
    fetch(endpoint("end", call.sessionId), {
      method: "POST", keepalive: true, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() }, body: "{}",
    });
    if (call.room) call.room.disconnect();
  });

  const form = $("start-form");
  if (form) form.addEventListener("submit", startCall);
  $("interrupt").addEventListener("click", () => interrupt("button"));
  $("end").addEventListener("click", () => endCall());
  $("rejoin").addEventListener("click", () => rejoin());
  $("mute").addEventListener("click", toggleMute);
  $("audio-unlock").addEventListener("click", async () => {
    if (call && call.room) await call.room.startAudio();
    $("audio-unlock").hidden = true;
  });
  setPhase("idle");
})();
