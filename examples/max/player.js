// Node for Max player for the stemjepa-live server (protocol v1, docs/protocol.md): shows the
// matches per instrument, flashes on the live beats, and cues the top match of one instrument so
// that buffer~ / groove~ start it on the next live downbeat at the live tempo (player.maxpat).
//
// In Max:   [node.script player.js @autostart 1]  (run `npm install` in this folder once)
//   outlet messages (the patch routes on the first word; OUTLETS below is the complete list):
//     inst <i> <instrument> <stem_id> <score>   top match of instrument i (0-based), every hop
//     tempo <bpm>                               live tempo, every beat message with a tempo
//     beat <n> <wall_time>                      at each live beat (scheduled on next_beats_wall; n: its
//                                               live number, next_beats_number, as in cue.beat)
//     load <file>                               a new top match for the playing instrument: read it into buffer~
//     play <position_ms> <rate> <stream_time> <wall_time>   (the final forecast of the cue's downbeat)
//                                               at the cue's wall time: start groove~ at position_ms (in the
//                                               file) at that rate; the cue's stream and wall time follow
//     stop                                      the input went silent: stop groove~
//     status <state> <hops> <drops> <p50_ms>    about once a second
//     reply <json>                              answer to a control request
//   inlet messages: "follow <i>" (which instrument to play, default 0), "recue" (cue the top match
//     again at the next downbeat), "connect ADDR", "control ADDR", "send {json}", "k 3", "pause", "resume"
// In a terminal: node examples/max/player.js [PUB_ADDR] [--ctl ADDR] [--follow I] [--plays N] [--timeout S]
//   prints every outlet message as one JSON line {"out": name, "args": [...], "at": unix s};
//   exits after N "play" messages or S seconds. `--outlets` prints OUTLETS as JSON and exits.
"use strict";

const OUTLETS = ["inst", "tempo", "beat", "load", "play", "stop", "status", "reply"];

const args = process.argv.slice(2);
if (args.includes("--outlets")) {
  console.log(JSON.stringify(OUTLETS));
  process.exit(0);
}

const { Client } = require("./client");
let maxApi = null;
try {
  maxApi = require("max-api"); // only inside Max's node.script
} catch (e) {
  maxApi = null;
}

function opt(name, dflt) {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
}
const withValue = new Set(["--ctl", "--follow", "--plays", "--timeout"]);
const positional = args.filter((a, i) => !a.startsWith("--") && !(i > 0 && withValue.has(args[i - 1])));
let pubAddr = positional[0] || "tcp://127.0.0.1:5555";
let ctlAddr = opt("--ctl", "tcp://127.0.0.1:5556");
let follow = parseInt(opt("--follow", "0"), 10);
const maxPlays = parseInt(opt("--plays", "0"), 10);
const timeoutS = parseFloat(opt("--timeout", "0"));

function emit(name, ...vals) {
  if (!OUTLETS.includes(name)) throw new Error(`not an outlet: ${name}`);
  if (maxApi) maxApi.outlet(name, ...vals);
  else console.log(JSON.stringify({ out: name, args: vals, at: Date.now() / 1000 }));
}
function log(msg) {
  if (maxApi) maxApi.post(msg);
  else console.error(msg);
}

// ---- scheduling on the server's wall clock (same machine, or clocks kept in sync by NTP)
function at(wallS, fn) {
  return setTimeout(fn, Math.max(0, wallS * 1000 - Date.now()));
}

let beatTimer = null;
let beatAt = null; // wall s of the scheduled beat
let beatCount = 0;
let lastFired = -Infinity; // wall s of the latest beat emitted
let lastNumber = null; // its live beat number (next_beats_number)
let lastPeriod = Infinity; // s, the period it was forecast at
function onBeat(msg) {
  refineCue(msg);
  if (msg.tempo != null) emit("tempo", Math.round(msg.tempo * 100) / 100);
  const period = msg.period_s || 0.5;
  // never two beats closer than half a period of the faster tempo (after an octave change the
  // slower period would swallow the first beat of the new tempo)
  const half = 0.5 * Math.min(period, lastPeriod);
  const walls = msg.next_beats_wall || [];
  const nums = msg.next_beats_number || []; // the server's beat numbers, as in cue.beat
  const now = Date.now() / 1000;
  if (beatTimer && beatAt !== null && beatAt <= now + 0.003) return; // a beat fires now
  const i = walls.findIndex((w, j) => w > now + 0.005 && w > lastFired + half &&
    !(j < nums.length && lastNumber !== null && nums[j] <= lastNumber)); // a number beats once
  if (i < 0) {
    if (beatTimer && !msg.signal) { clearTimeout(beatTimer); beatTimer = null; beatAt = null; }
    return;
  }
  const next = walls[i];
  const n = i < nums.length ? nums[i] : null;
  if (n !== null) {
    if (beatTimer) clearTimeout(beatTimer); // the first beat not emitted yet, newest forecast
  } else if (beatTimer && beatAt !== null && Math.abs(next - beatAt) < 0.5 * period) {
    clearTimeout(beatTimer); // (an older server) the same beat, re-estimated
  } else if (beatTimer) return; // a different, earlier beat is pending: keep it
  beatAt = next;
  beatTimer = at(next, () => {
    beatTimer = null;
    beatAt = null;
    lastFired = next;
    lastPeriod = period;
    if (n !== null) lastNumber = n;
    emit("beat", n === null ? beatCount : n, next);
    beatCount++;
  });
}

// ---- the played stem: load on a new top match, start it at its cue
let playing = null; // {stem_id, offset}
let cueTimer = null;
let cueBeat = null; // live beat number of the pending cue
let plays = 0;
let wantRecue = false;
function onMatch(msg) {
  const insts = msg.instruments || [];
  insts.forEach((inst, i) => {
    const top = (msg.matches[inst] || [])[0];
    if (top) emit("inst", i, inst, top.stem_id, Math.round(top.score * 1000) / 1000);
    else emit("inst", i, inst, "-", 0);
  });
  if (!msg.signal) {
    if (playing) emit("stop");
    playing = null;
    if (cueTimer) { clearTimeout(cueTimer); cueTimer = null; }
    return;
  }
  const top = (msg.matches[insts[follow]] || [])[0];
  if (!top || !top.cue || !top.file) return;
  const same = playing && playing.stem_id === top.stem_id && playing.offset === top.offset;
  if (same && !wantRecue && !cueTimer) return; // started already: it plays on
  // pending: move it to the newest forecast of the same downbeat (a later one means this one is
  // too close to be announced again: keep it)
  if (same && !wantRecue && top.cue.beat !== cueBeat && cueAt !== null && cueAt < Date.now() / 1000 + 0.25) return;
  const reschedule = same && !wantRecue;
  wantRecue = false;
  if (cueTimer) clearTimeout(cueTimer);
  playing = { stem_id: top.stem_id, offset: top.offset };
  if (!reschedule) emit("load", top.file);
  const cue = top.cue;
  cueBeat = cue.beat;
  const rate = top.stretch == null ? 1.0 : top.stretch;
  pendingCue = { pos: cue.stem_pos, rate, stream: cue.stream_time };
  schedulePlay(cue.wall_time, cue.stream_time);
}

// the pending start; the beat forecasts of its downbeat refine it in the last ~150 ms, where
// no match message announces that cue again
let pendingCue = null;
let cueAt = null;
function schedulePlay(wall, stream) {
  if (cueTimer) clearTimeout(cueTimer);
  cueAt = wall;
  pendingCue.stream = stream;
  cueTimer = at(wall, () => {
    cueTimer = null;
    emit("play", Math.round(pendingCue.pos * 1e6) / 1e3, pendingCue.rate, pendingCue.stream, wall);
    plays += 1;
    if (maxPlays && plays >= maxPlays) shutdown(0);
  });
}
function refineCue(msg) {
  if (!cueTimer || !msg.signal || !msg.tempo) return;
  const half = 30 / msg.tempo;
  const walls = msg.next_beats_wall || [];
  const nums = msg.next_beats_number || [];
  const now = Date.now() / 1000;
  // the forecast of the cue's own beat number (its beat outlet comes from the same forecast);
  // without one, the forecast nearest in time
  const i = nums.includes(cueBeat)
    ? nums.findIndex((n, j) => n === cueBeat && walls[j] > now + 0.003)
    : walls.findIndex((w) => Math.abs(w - cueAt) < half && w > now + 0.003);
  if (i >= 0) schedulePlay(walls[i], msg.next_beats[i]);
}

function onStatus(msg) {
  const l = msg.latency || {};
  emit("status", msg.state, msg.counters.hops, msg.counters.drops, l.p50 == null ? -1 : l.p50);
}

// ---- sockets (client.js)
const client = new Client({
  ctlAddr,
  log,
  onReply: (obj) => emit("reply", JSON.stringify(obj)),
  onMessage: (topic, msg) => {
    if (topic === "beat") onBeat(msg);
    else if (topic === "match") onMatch(msg);
    else if (topic === "status") onStatus(msg);
  },
});
const subscribe = (addr) => client.subscribe(addr);
const control = (obj) => client.control(obj);

function shutdown(code) {
  for (const t of [beatTimer, cueTimer]) if (t) clearTimeout(t);
  client.close();
  setTimeout(() => process.exit(code), 10);
}

if (maxApi) {
  maxApi.addHandler("follow", (i) => { follow = Number(i) || 0; wantRecue = true; });
  maxApi.addHandler("recue", () => { wantRecue = true; });
  maxApi.addHandler("connect", (addr) => subscribe(String(addr)));
  maxApi.addHandler("control", (addr) => client.setControl(addr));
  maxApi.addHandler("send", (...words) => control(JSON.parse(words.join(" "))));
  maxApi.addHandler("k", (k) => control({ cmd: "set_k", k: Number(k) }));
  for (const c of ["pause", "resume", "status", "ping", "reset"]) maxApi.addHandler(c, () => control({ cmd: c }));
} else {
  process.on("SIGINT", () => shutdown(0));
  process.on("SIGTERM", () => shutdown(0));
  if (timeoutS > 0) setTimeout(() => { log(`timeout after ${timeoutS}s, ${plays} plays`); shutdown(plays ? 0 : 1); }, timeoutS * 1000);
}
subscribe(pubAddr);
