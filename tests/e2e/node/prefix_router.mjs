// A stock prefix router, the way Express (`app.use('/api/mcp')`), Hono
// (`/api/mcp/*`) and a Next.js catch-all pick a handler: it matches the
// prefix on the raw URL and on every decoded and normalised spelling of it
// (case-insensitively, as Express does by default), and the loosest match
// wins. Each answer says which handler ran and which Authorization and
// identity headers it saw; every request is also kept in a log read at
// GET /__seen straight from this server (never through the sidecar).
//
// WebSocket upgrades are accepted by hand (RFC 6455 section 4.2.2) and the
// first text frame says the same as an HTTP answer.
//
// Environment: PORT  listen port on 127.0.0.1 (default 3000)
import crypto from "node:crypto";
import http from "node:http";

const port = Number(process.env.PORT ?? 3000);
const seen = [];
// Longest first, as a router that mounts both would order them.
const HANDLERS = [
  ["/api/mcp-admin", "mcp-admin"],
  ["/api/mcp", "mcp"],
  ["/api/auth", "auth"],
  ["/static", "static"],
  ["/ws", "ws"],
];

function decoded(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

// Every spelling a router in the wild acts on.
function views(url) {
  const raw = url.split("?", 1)[0];
  const out = [raw, decoded(raw), decoded(decoded(raw))];
  for (const text of [...out]) {
    try {
      const pathname = new URL(text, "http://x").pathname; // WHATWG: `..`, `%2e`, `\`
      out.push(pathname, decoded(pathname));
    } catch {}
  }
  for (const text of [...out]) {
    out.push(text.replace(/;[^/]*/g, "")); // Tomcat-style path parameters
    out.push(text.replace(/\/+/g, "/"));
  }
  return out.map((v) => v.toLowerCase());
}

function route(url) {
  const routes = new Set();
  for (const view of views(url)) {
    for (const [prefix, name] of HANDLERS) {
      if (view.startsWith(prefix)) {
        routes.add(name);
        break;
      }
    }
  }
  return [...routes];
}

function report(req) {
  const routes = route(req.url);
  const entry = {
    url: req.url,
    method: req.method,
    upgrade: Boolean(req.headers.upgrade),
    probe: req.headers["x-probe"] ?? null,
    handler: routes[0] ?? "not_found",
    routes,
    authorization: req.headers.authorization ?? null,
    userId: req.headers["x-sidecar-user-id"] ?? null,
    clientId: req.headers["x-sidecar-client-id"] ?? null,
    scopes: req.headers["x-sidecar-scopes"] ?? null,
    convexToken: Boolean(req.headers["x-sidecar-convex-token"]),
  };
  seen.push(entry);
  return entry;
}

const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    return res.end("ok");
  }
  if (req.url === "/__seen") {
    res.writeHead(200, { "content-type": "application/json" });
    return res.end(JSON.stringify(seen));
  }
  req.resume();
  req.on("end", () => {
    const entry = report(req);
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(entry));
  });
});

function textFrame(text) {
  const payload = Buffer.from(text, "utf8");
  const head =
    payload.length < 126
      ? Buffer.from([0x81, payload.length])
      : Buffer.from([0x81, 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([head, payload]);
}

server.on("upgrade", (req, socket) => {
  const entry = report(req);
  const accept = crypto
    .createHash("sha1")
    .update(`${req.headers["sec-websocket-key"]}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
    .digest("base64");
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  socket.write(textFrame(JSON.stringify(entry)));
  socket.on("data", (data) => {
    if ((data[0] & 0x0f) === 0x8) {
      socket.end(Buffer.from([0x88, 0x00])); // answer a close with a close
    }
  });
  socket.on("error", () => socket.destroy());
});

server.keepAliveTimeout = 30_000;
server.listen(port, "127.0.0.1", () => {
  console.log(`prefix router listening on http://127.0.0.1:${port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
