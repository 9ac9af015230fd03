// The Node `ws` baseline for bench/rooms.py: just enough of the Hotsock frames for the same load
// generator (hotsock.connected, hotsock.subscribe -> hotsock.subscribed, client messages fanned
// out to a room's other subscribers). Each socket's frames of one event-loop turn leave in one
// write (cork now, uncork on the next tick), the way a tuned Node server does it.
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] || 8080);
const rooms = new Map(); // channel -> Set<ws>
let seq = 0;

const server = http.createServer((req, res) => {
  res.writeHead(req.url === "/healthz" ? 200 : 404, { "Content-Type": "application/json" });
  res.end('{"status":"ok"}');
});
const wss = new WebSocketServer({ server, perMessageDeflate: false });

function send(ws, text) {
  const sock = ws._socket;
  if (!sock.corked) {
    sock.cork();
    process.nextTick(() => sock.uncork());
  }
  ws.send(text);
}

wss.on("connection", (ws) => {
  ws.rooms = new Set();
  send(ws, '{"event":"hotsock.connected","data":{"connectionId":"c' + ++seq + '"}}');
  ws.on("message", (raw) => {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (msg.event === "hotsock.subscribe") {
      let room = rooms.get(msg.channel);
      if (!room) rooms.set(msg.channel, (room = new Set()));
      room.add(ws);
      ws.rooms.add(msg.channel);
      send(ws, JSON.stringify({ event: "hotsock.subscribed", channel: msg.channel, data: {} }));
      return;
    }
    const room = rooms.get(msg.channel);
    if (!room) return;
    const text = JSON.stringify({
      id: String(++seq).padStart(26, "0"),
      event: msg.event,
      channel: msg.channel,
      data: msg.data,
      meta: { uid: null, umd: null },
    });
    for (const peer of room) if (peer !== ws) send(peer, text);
  });
  ws.on("close", () => {
    for (const channel of ws.rooms) rooms.get(channel)?.delete(ws);
  });
});

server.listen(port, "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
