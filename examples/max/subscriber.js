// Node for Max subscriber for the stemjepa-live server (protocol v1, docs/protocol.md).
//
// In Max:   [node.script subscriber.js @autostart 1]  (run `npm install` in this folder once)
//           outlet messages: "match <dict>", "beat <dict>", "status <dict>", "reply <dict>"
//           inlet messages:  "connect tcp://127.0.0.1:5555", "send {json command}" (to the control socket),
//                            "instruments drums fretless bass" style shortcuts: "k 3", "pause", "resume"
// In a terminal: node examples/max/subscriber.js [PUB_ADDR] [--ctl CTL_ADDR] [--count N] [--timeout S] [--json] [--validate [DIR]]
//           prints one line per message (console.log), exits after N messages / S seconds.
//           --json: "TOPIC {json}" per line (the message as sent).
"use strict";

const { Client } = require("./client");

let maxApi = null;
try {
  maxApi = require("max-api"); // only exists inside Max's node.script
} catch (e) {
  maxApi = null;
}

const args = process.argv.slice(2);
function opt(name, dflt) {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
}
const positional = args.filter((a, i) => !a.startsWith("--") && !(i > 0 && args[i - 1].startsWith("--") && args[i - 1] !== "--json"));
let pubAddr = positional[0] || "tcp://127.0.0.1:5555";
let ctlAddr = opt("--ctl", "tcp://127.0.0.1:5556");
const maxCount = parseInt(opt("--count", "0"), 10);
const timeoutS = parseFloat(opt("--timeout", "0"));
const rawJson = args.includes("--json");

// --validate [DIR]: check every message and reply against the protocol's JSON Schema files
// (server/json_schemas, made by `python -m server.schemas`); invalid ones are reported on stderr
// and make the exit status 3
const validateDir = args.includes("--validate")
  ? (() => { const v = opt("--validate", ""); return v && !v.startsWith("--") && !v.startsWith("tcp://") ? v : require("path").join(__dirname, "..", "..", "server", "json_schemas"); })()
  : null;
let validators = null;
let invalid = 0;
if (validateDir) {
  const fs = require("fs");
  const path = require("path");
  const Ajv2020 = require("ajv/dist/2020");
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  validators = {};
  for (const f of fs.readdirSync(validateDir).filter((n) => n.endsWith(".json"))) {
    validators[f.slice(0, -5)] = ajv.compile(JSON.parse(fs.readFileSync(path.join(validateDir, f), "utf8")));
  }
}
function check(kind, obj) {
  if (!validators) return;
  const name = kind === "reply" ? (obj.ok ? `reply.${obj.cmd}` : "reply.error") : kind;
  const v = validators[name];
  if (!v) { invalid += 1; console.error(`invalid ${kind}: no schema ${name}.json`); return; }
  if (!v(obj)) {
    invalid += 1;
    console.error(`invalid ${kind} seq=${obj.seq}: ${v.errors.map((e) => `${e.instancePath || "/"} ${e.message}`).join("; ")}`);
  }
}

function out(kind, obj) {
  check(kind, obj);
  if (maxApi) {
    maxApi.outlet(kind, obj); // Max receives a dict
  } else if (rawJson) {
    console.log(kind + " " + JSON.stringify(obj));
  } else if (kind === "match") {
    const parts = (obj.instruments || []).map((inst) => {
      const top = (obj.matches[inst] || [])[0];
      // stem_id is the library's unique id of the stem (TRACK/STEM for the dataset layout): shown as is
      return top ? `${inst}: ${top.stem_id} (${top.score.toFixed(2)})` : `${inst}: -`;
    });
    console.log(`match seq=${obj.seq} t=${obj.stream_time.toFixed(2)} latency=${obj.latency_ms.toFixed(1)}ms ${parts.join("; ")}`);
  } else if (kind === "beat") {
    const tempo = obj.tempo == null ? "?" : obj.tempo.toFixed(1);
    console.log(`beat seq=${obj.seq} tempo=${tempo} phase=${obj.phase == null ? "?" : obj.phase.toFixed(2)} latency=${obj.latency_ms.toFixed(1)}ms`);
  } else if (kind === "status") {
    const l = obj.latency || {};
    console.log(`status seq=${obj.seq} state=${obj.state} hops=${obj.counters.hops} drops=${obj.counters.drops} p50=${l.p50} p99=${l.p99}`);
  } else {
    console.log(kind + " " + JSON.stringify(obj));
  }
}

function log(msg) {
  if (maxApi) maxApi.post(msg);
  else console.error(msg);
}

let received = 0;
const client = new Client({
  ctlAddr,
  log,
  onReply: (obj) => out("reply", obj),
  onMessage: (topic, obj) => {
    out(topic, obj);
    received += 1;
    if (maxCount && received >= maxCount) shutdown(0);
  },
});
const subscribe = (addr) => client.subscribe(addr);
const control = (obj) => client.control(obj);

function shutdown(code) {
  client.close();
  setTimeout(() => process.exit(code === 0 && invalid ? 3 : code), 10);
}

if (maxApi) {
  maxApi.addHandler("connect", (addr) => subscribe(String(addr)));
  maxApi.addHandler("control", (addr) => client.setControl(addr));
  maxApi.addHandler("send", (...words) => control(JSON.parse(words.join(" "))));
  maxApi.addHandler("instruments", (...names) => control({ cmd: "set_instruments", instruments: names.join(" ").split(",").map((s) => s.trim()).filter((s) => s) }));
  maxApi.addHandler("k", (k) => control({ cmd: "set_k", k: Number(k) }));
  maxApi.addHandler("hop", (ms) => control({ cmd: "set_hop", ms: Number(ms) }));
  maxApi.addHandler("library", (...p) => control({ cmd: "set_library", path: p.join(" ") }));
  for (const c of ["pause", "resume", "status", "ping", "reset"]) maxApi.addHandler(c, () => control({ cmd: c }));
} else {
  process.on("SIGINT", () => shutdown(0));
  process.on("SIGTERM", () => shutdown(0));
  if (timeoutS > 0) setTimeout(() => { log(`timeout after ${timeoutS}s, ${received} messages`); shutdown(received ? 0 : 1); }, timeoutS * 1000);
  if (args.includes("--ping")) control({ cmd: "ping" });
}
subscribe(pubAddr);
