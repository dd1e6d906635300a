// Checks a running Slipstream instance with the npm `ws` package (the
// WebSocket library of the original Node.js clients), speaking the wire
// protocol by hand: HELLO, SK, SA, GK, CMD (slipstream.ping and an
// application command answered by another client), ACKs both ways.
//
//   SLIPSTREAM_URL=ws://127.0.0.1:7070/ws node protocol.mjs
//
// The instance needs the state stage (GK) and command stage, and its
// listener `allow_commands = true` (slipstream.ping). Exits 0 and prints
// "ok" when every check passes; otherwise prints what did not match and
// exits 1.
import { WebSocket } from "ws";
import { isDeepStrictEqual } from "node:util";
import { randomUUID } from "node:crypto";

const url = process.env.SLIPSTREAM_URL;
if (!url) {
  fail("set SLIPSTREAM_URL to the instance's WebSocket URL, e.g. ws://127.0.0.1:7070/ws");
}
const timeoutMs = Number(process.env.SLIPSTREAM_TIMEOUT_MS || 5000);
const run = randomUUID().slice(0, 8);

function fail(msg) {
  console.error(`protocol test failed: ${msg}`);
  process.exit(1);
}

function check(cond, msg) {
  if (!cond) fail(msg);
}

// Client is one connection: every frame it receives is queued; data
// deliveries are ACKed at once (and remembered), ERR frames fail the test.
class Client {
  constructor(id) {
    this.id = id;
    this.frames = [];
    this.waiters = [];
    this.delivered = [];
  }

  async open() {
    this.ws = new WebSocket(url);
    this.ws.on("message", (data, isBinary) => {
      check(!isBinary, `${this.id} got a binary frame`);
      let m;
      try {
        m = JSON.parse(data.toString("utf8"));
      } catch (e) {
        fail(`${this.id} got a frame that is not JSON: ${data}`);
      }
      if (m.type === "ERR") fail(`${this.id} got ERR: ${JSON.stringify(m)}`);
      if (isData(m) && !m.inReplyTo) {
        this.delivered.push(m);
        this.send({ type: "ACK", messageId: m.messageId, clusterGroupId: m.clusterGroupId });
      }
      this.frames.push(m);
      this.waiters = this.waiters.filter((w) => !w());
    });
    this.ws.on("close", (code, reason) => {
      if (!this.opened) fail(`${this.id}: cannot connect to ${url} (close code ${code})`);
      if (!this.closing) fail(`${this.id}: connection closed (${code} ${reason})`);
    });
    await new Promise((resolve, reject) => {
      this.ws.once("open", () => {
        this.opened = true;
        resolve();
      });
      this.ws.once("error", (e) => reject(new Error(`${this.id}: cannot connect to ${url}: ${e.message}`)));
    });
    this.send({ type: "HELLO", protocol: 1, instanceId: this.id, role: "client", tags: ["local"] });
    const hello = await this.next((m) => m.type === "HELLO", "the HELLO answer");
    check(hello.protocol === 1, `HELLO answer has protocol ${hello.protocol}, want 1`);
    check(typeof hello.instanceId === "string" && hello.instanceId !== "", "HELLO answer has no instanceId");
    return hello;
  }

  send(m) {
    this.ws.send(JSON.stringify(m));
  }

  // next waits for (and removes) the first frame matching pred.
  next(pred, what) {
    return new Promise((resolve) => {
      const take = () => {
        const i = this.frames.findIndex(pred);
        if (i < 0) return false;
        clearTimeout(timer);
        resolve(this.frames.splice(i, 1)[0]);
        return true;
      };
      const timer = setTimeout(() => fail(`${this.id}: no ${what} within ${timeoutMs} ms`), timeoutMs);
      if (!take()) this.waiters.push(take);
    });
  }

  ack(messageId) {
    return this.next((m) => m.type === "ACK" && m.messageId === messageId, `ACK of ${messageId}`);
  }

  reply(messageId, what) {
    return this.next((m) => m.inReplyTo === messageId, `${what} (reply to ${messageId})`);
  }

  delivery(messageId) {
    return this.next((m) => m.messageId === messageId && !m.inReplyTo && isData(m), `delivery of ${messageId}`);
  }

  close() {
    this.closing = true;
    this.ws.close(1000);
  }
}

function isData(m) {
  return ["SK", "SA", "SW", "CMD"].includes(m.type);
}

const writer = new Client(`node-writer-${run}`);
const reader = new Client(`node-reader-${run}`);
const hello = await writer.open();
await reader.open();

// SK: ACKed to the writer, delivered to the reader (which ACKs it), every
// application field intact.
const skKey = `node:${run}:sk`;
const skValue = { status: "paid", amount: 12.5, items: [1, "two", { three: null }] };
const sk = { type: "SK", messageId: `sk-${run}`, key: skKey, value: skValue, app: { trace: "é✓" } };
writer.send(sk);
const skAck = await writer.ack(sk.messageId);
check(typeof skAck.clusterGroupId === "string" && skAck.clusterGroupId !== "", `ACK lacks clusterGroupId: ${JSON.stringify(skAck)}`);
const skGot = await reader.delivery(sk.messageId);
check(skGot.type === "SK" && skGot.key === skKey, `delivered SK: ${JSON.stringify(skGot)}`);
check(isDeepStrictEqual(skGot.value, skValue), `delivered SK value ${JSON.stringify(skGot.value)}, want ${JSON.stringify(skValue)}`);
check(isDeepStrictEqual(skGot.app, sk.app), `application field changed: ${JSON.stringify(skGot.app)}`);
check(skGot.originInstanceId === writer.id, `originInstanceId ${skGot.originInstanceId}, want ${writer.id}`);
check(Array.isArray(skGot.messagePath) && skGot.messagePath.includes(hello.instanceId),
  `messagePath ${JSON.stringify(skGot.messagePath)} lacks ${hello.instanceId}`);

// SA: the same, with an array value.
const saKey = `node:${run}:sa`;
const saValue = ["a", 2, { b: [3] }];
const sa = { type: "SA", messageId: `sa-${run}`, key: saKey, value: saValue };
writer.send(sa);
await writer.ack(sa.messageId);
const saGot = await reader.delivery(sa.messageId);
check(isDeepStrictEqual(saGot.value, saValue), `delivered SA value ${JSON.stringify(saGot.value)}`);

// GK: the state answers with the value set above, found; an unknown key
// is found: false. Gets are never ACKed.
const gk = { type: "GK", messageId: `gk-${run}`, key: skKey };
writer.send(gk);
const gkReply = await writer.reply(gk.messageId, "GK reply");
check(gkReply.type === "GK" && gkReply.found === true, `GK reply: ${JSON.stringify(gkReply)}`);
check(isDeepStrictEqual(gkReply.value, skValue), `GK value ${JSON.stringify(gkReply.value)}, want ${JSON.stringify(skValue)}`);
check(gkReply.key === skKey && gkReply.originInstanceId === hello.instanceId, `GK reply key/origin: ${JSON.stringify(gkReply)}`);
const gkSa = { type: "GK", messageId: `gk-sa-${run}`, key: saKey };
writer.send(gkSa);
const gkSaReply = await writer.reply(gkSa.messageId, "GK reply for the SA key");
check(gkSaReply.found === true && isDeepStrictEqual(gkSaReply.value, saValue), `GK of the SA key: ${JSON.stringify(gkSaReply)}`);
const gkMissing = { type: "GK", messageId: `gk-missing-${run}`, key: `node:${run}:never-set` };
writer.send(gkMissing);
const missing = await writer.reply(gkMissing.messageId, "GK reply for a missing key");
check(missing.found === false && missing.value === undefined, `GK of a missing key: ${JSON.stringify(missing)}`);

// CMD slipstream.ping: ACKed (a command is data) and answered by the instance.
const ping = { type: "CMD", messageId: `ping-${run}`, command: "slipstream.ping" };
writer.send(ping);
await writer.ack(ping.messageId);
const pong = await writer.reply(ping.messageId, "slipstream.ping reply");
check(pong.type === "CMD" && pong.result && pong.result.pong === true, `ping reply: ${JSON.stringify(pong)}`);
check(pong.result.instanceId === hello.instanceId, `pong from ${pong.result.instanceId}, want ${hello.instanceId}`);

// An application command: delivered to the reader, which answers it; the
// answer comes back to the writer.
const cmd = { type: "CMD", messageId: `cmd-${run}`, command: "app.echo", args: { text: "hi" } };
writer.send(cmd);
await writer.ack(cmd.messageId);
const cmdGot = await reader.delivery(cmd.messageId);
check(cmdGot.command === "app.echo" && isDeepStrictEqual(cmdGot.args, cmd.args), `delivered CMD: ${JSON.stringify(cmdGot)}`);
reader.send({ type: "CMD", messageId: `cmd-reply-${run}`, inReplyTo: cmd.messageId, command: "app.echo",
  result: { echoed: cmdGot.args.text } });
const echoed = await writer.reply(cmd.messageId, "app.echo reply");
check(isDeepStrictEqual(echoed.result, { echoed: "hi" }), `app.echo reply: ${JSON.stringify(echoed)}`);

// Every data message was delivered exactly once to the reader.
const ids = reader.delivered.map((m) => m.messageId);
check(new Set(ids).size === ids.length, `duplicate deliveries: ${ids}`);
check(ids.length === 3, `reader got ${ids.length} deliveries (${ids}), want 3 (SK, SA, app.echo)`);

writer.close();
reader.close();
console.log("ok");
