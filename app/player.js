// omni2 reply player: plays 16-bit PCM chunks as they arrive, back to back, with the Web Audio API.
// The server sends one JSON message per chunk through a hidden Gradio textbox:
//   {"seq": n, "cmd": "chunk", "rate": 24000, "pcm": "<base64 int16 little-endian>"}
//   {"seq": n, "cmd": "stop"}   barge-in / clear: silence now and drop what is queued
//   {"seq": n, "cmd": "end"}    the reply finished generating (queued audio keeps playing)
// window.omni2Player.stats is read by the browser tests.
(() => {
  if (window.omni2Player) return;
  const P = {
    ctx: null,
    next: 0,
    sources: new Set(),
    lastSeq: -1,
    stats: {messages: 0, chunks: 0, samples: 0, firstChunkAt: null, firstPlayAt: null, stops: 0,
            ends: 0, lastEndAt: null, lastStopAt: null, playing: false, error: null},
  };
  P.ensure = () => {
    try {
      if (!P.ctx) P.ctx = new (window.AudioContext || window.webkitAudioContext)();
      if (P.ctx.state === "suspended") P.ctx.resume();
    } catch (e) {
      P.stats.error = String(e);
    }
    return P.ctx;
  };
  // Browsers only start audio after a user gesture: any click on the page unlocks it.
  document.addEventListener("pointerdown", () => P.ensure(), true);
  document.addEventListener("keydown", () => P.ensure(), true);

  const indicator = (on) => {
    P.stats.playing = on;
    document.body.dataset.omni2Playing = on ? "1" : "0";
    const el = document.querySelector("#omni2-speaking");
    if (el) el.textContent = on ? "🔊 speaking…" : "";
  };

  P.stop = () => {
    for (const s of P.sources) {
      try { s.stop(); } catch (e) { /* already stopped */ }
    }
    P.sources.clear();
    P.next = 0;
    P.stats.stops += 1;
    P.stats.lastStopAt = performance.now();
    indicator(false);
  };

  P.play = (msg) => {
    const ctx = P.ensure();
    if (!ctx) return;
    const bytes = Uint8Array.from(atob(msg.pcm), (c) => c.charCodeAt(0));
    const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
    if (!pcm.length) return;
    const buf = ctx.createBuffer(1, pcm.length, msg.rate);
    const ch = buf.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
    const src = ctx.createBufferSource();
    src.buffer = buf;
    src.connect(ctx.destination);
    const start = Math.max(ctx.currentTime + 0.03, P.next);
    src.start(start);
    P.next = start + buf.duration;
    P.sources.add(src);
    src.onended = () => {
      P.sources.delete(src);
      if (!P.sources.size) indicator(false);
    };
    P.stats.chunks += 1;
    P.stats.samples += pcm.length;
    if (P.stats.firstChunkAt === null) P.stats.firstChunkAt = performance.now();
    const delay = Math.max(0, (start - ctx.currentTime) * 1000);
    setTimeout(() => {
      if (!P.sources.has(src)) return;
      if (P.stats.firstPlayAt === null) P.stats.firstPlayAt = performance.now();
      indicator(true);
    }, delay);
  };

  P.handle = (raw) => {
    if (!raw) return;
    let msg;
    try { msg = JSON.parse(raw); } catch (e) { return; }
    if (typeof msg.seq !== "number" || msg.seq <= P.lastSeq) return;
    P.lastSeq = msg.seq;
    P.stats.messages += 1;
    if (msg.cmd === "chunk") P.play(msg);
    else if (msg.cmd === "stop") P.stop();
    else if (msg.cmd === "end") { P.stats.ends += 1; P.stats.lastEndAt = performance.now(); }
  };
  window.omni2Player = P;
})();
