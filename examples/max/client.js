// ZeroMQ plumbing shared by the Node for Max scripts of this folder (subscriber.js, player.js):
// one SUB socket on the server's publish address, one REQ socket for control requests
// (protocol v1, docs/protocol.md).
"use strict";

const zmq = require("zeromq");

class Client {
  // onMessage(topic, obj) for every published message; onReply(obj) for every control reply
  constructor({ ctlAddr, log, onMessage, onReply }) {
    this.ctlAddr = ctlAddr;
    this.log = log;
    this.onMessage = onMessage;
    this.onReply = onReply;
    this.sub = null;
    this.req = null;
    this.queue = Promise.resolve();
    this.running = true;
  }

  async subscribe(addr) {
    if (this.sub) this.sub.close();
    const mine = (this.sub = new zmq.Subscriber({ linger: 0 }));
    mine.connect(addr);
    mine.subscribe("match", "beat", "status");
    this.log(`subscribed to ${addr}`);
    try {
      for await (const [topic, body] of mine) {
        let obj;
        try {
          obj = JSON.parse(body.toString("utf8"));
        } catch (e) {
          this.log(`undecodable message on ${topic}`);
          continue;
        }
        this.onMessage(topic.toString(), obj);
      }
    } catch (e) {
      if (this.running && mine === this.sub) this.log(`subscriber error: ${e.message}`);
    }
  }

  setControl(addr) {
    this.ctlAddr = String(addr);
    if (this.req) { this.req.close(); this.req = null; }
  }

  // one request in flight at a time
  control(obj) {
    this.queue = this.queue.then(async () => {
      if (!this.req) {
        this.req = new zmq.Request({ linger: 0, receiveTimeout: 5000, sendTimeout: 1000 });
        this.req.connect(this.ctlAddr);
      }
      try {
        await this.req.send(JSON.stringify(obj));
        const [reply] = await this.req.receive();
        this.onReply(JSON.parse(reply.toString("utf8")));
      } catch (e) {
        this.log(`control request failed: ${e.message}`);
        this.req.close();
        this.req = null; // a REQ socket that timed out cannot be reused
      }
    });
    return this.queue;
  }

  close() {
    this.running = false;
    if (this.sub) this.sub.close();
    if (this.req) this.req.close();
  }
}

module.exports = { Client };
