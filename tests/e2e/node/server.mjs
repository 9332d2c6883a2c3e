// A real Better Auth + convex() server, run in plain Node without Convex.
// Used by the sidecar's end-to-end tests, benchmark and demo.
//
// Environment:
//   PORT             listen port on 127.0.0.1 (default 3000)
//   CONVEX_SITE_URL  the session JWT issuer (default http://127.0.0.1:$PORT)
//   BETTER_AUTH_SECRET, BETTER_AUTH_SECRETS  as Better Auth reads them
//   JWKS             optional static JWKS (the deployment's value)
//   TRUSTED_ORIGINS  comma-separated extra trusted origins (the sidecar's)
//   BETTER_AUTH_URL  the app's public base URL
//   PUBLIC_URL       the origin clients see (the sidecar's), for MCP challenges
//   AUTH_BASE_PATH   Better Auth's basePath (default /api/auth)
//   TLS_CERT, TLS_KEY  serve https with these PEM files (Better Auth hosted on
//                    its own https origin, as on <deployment>.convex.site)
//   COOKIE_DOMAIN    scope Better Auth's cookies to this domain
//   COOKIE_SAMESITE  Better Auth's SameSite for its cookies (default lax); "none"
//                    also sets Secure, as browsers require (crossDomain-style apps)
//   CROSS_DOMAIN_SITE_URL  add the crossDomain plugin for this site
//   CONVEX_PROVIDER_FILE  the customJwt provider entry `sidecar convex-auth-config
//                    --json` printed; the app checks Convex tokens with it exactly
//                    as Convex's customJwt would, and finds the person with the
//                    real @convex-dev/better-auth client code
import fs from "node:fs";
import http from "node:http";
import https from "node:https";

const port = Number(process.env.PORT ?? 3000);
process.env.CONVEX_SITE_URL ??= `http://127.0.0.1:${port}`;
process.env.BETTER_AUTH_SECRET ??= "e2e-secret-0123456789abcdef0123456789abcdef";

const { betterAuth } = await import("better-auth");
const { memoryAdapter } = await import("better-auth/adapters/memory");
const { toNodeHandler } = await import("better-auth/node");
const { convex, crossDomain } = await import("@convex-dev/better-auth/plugins");
const { getAuthConfigProvider } = await import("@convex-dev/better-auth/auth-config");

const jwks = process.env.JWKS || undefined;
const authConfig = { providers: [getAuthConfigProvider({ jwks })] };
const trustedOrigins = (process.env.TRUSTED_ORIGINS ?? "")
  .split(",")
  .map((o) => o.trim())
  .filter(Boolean);

const basePath = process.env.AUTH_BASE_PATH ?? "/api/auth";
const tls = process.env.TLS_CERT
  ? { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) }
  : null;
const plugins = [convex({ authConfig, jwks })];
if (process.env.CROSS_DOMAIN_SITE_URL) {
  plugins.push(crossDomain({ siteUrl: process.env.CROSS_DOMAIN_SITE_URL }));
}
const db = { user: [], session: [], account: [], verification: [], jwks: [] };
const auth = betterAuth({
  baseURL: process.env.BETTER_AUTH_URL ?? `${tls ? "https" : "http"}://127.0.0.1:${port}`,
  basePath,
  database: memoryAdapter(db),
  emailAndPassword: { enabled: true },
  trustedOrigins,
  plugins,
  logger: { level: "error" },
  advanced: {
    ...(process.env.COOKIE_DOMAIN
      ? { crossSubDomainCookies: { enabled: true, domain: process.env.COOKIE_DOMAIN } }
      : {}),
    ...(process.env.COOKIE_SAMESITE
      ? {
          defaultCookieAttributes: {
            sameSite: process.env.COOKIE_SAMESITE,
            ...(process.env.COOKIE_SAMESITE === "none" ? { secure: true } : {}),
          },
        }
      : {}),
  },
});
// Outside Convex, convex() drops every write unless the adapter says it runs
// in a mutation context (REFERENCES.md).
(await auth.$context).adapter.options.isRunMutationCtx = true;

const authHandler = toNodeHandler(auth);
const auth_ = auth;

// The app's MCP endpoint, as a Next.js route would have it: the TypeScript MCP
// SDK, stateless streamable HTTP. Behind the sidecar in enforce mode the
// request arrives with a verified token and the user's identity in headers;
// without a bearer token (metadata-only mode) it answers the MCP challenge.
const { McpServer } = await import("@modelcontextprotocol/sdk/server/mcp.js");
const { StreamableHTTPServerTransport } = await import(
  "@modelcontextprotocol/sdk/server/streamableHttp.js"
);

// How an app verifies the sidecar's tokens itself (metadata-only mode): the
// README shows this same snippet.
const { createLocalJWKSet, createRemoteJWKSet, jwtVerify } = await import("jose");
const sidecarJwks = process.env.PUBLIC_URL
  ? createRemoteJWKSet(new URL(`${process.env.PUBLIC_URL}/oauth/jwks`))
  : null;

async function verifySidecarToken(token, resource) {
  const { payload } = await jwtVerify(token, sidecarJwks, {
    issuer: `${process.env.PUBLIC_URL}/oauth`,
    audience: resource,
    typ: "at+jwt",
  });
  return payload;
}

// What Convex does with a customJwt provider (get-convex/convex-backend,
// crates/authentication): kid in jwks, alg equal to algorithm, iss equal to
// issuer, aud containing applicationID, sub/iat/exp present. Then the identity
// Convex functions see: subject = sub, issuer = iss, tokenIdentifier =
// iss|sub, custom claims as fields.
async function convexIdentity(token) {
  const providers = JSON.parse(fs.readFileSync(process.env.CONVEX_PROVIDER_FILE, "utf8"));
  const [provider] = providers;
  const jwksJson = Buffer.from(provider.jwks.split(",", 2)[1], "base64").toString("utf8");
  const keys = JSON.parse(jwksJson);
  const header = JSON.parse(Buffer.from(token.split(".")[0], "base64url").toString("utf8"));
  if (!keys.keys.some((k) => k.kid === header.kid)) throw new Error("kid not in jwks");
  if (header.alg !== provider.algorithm) throw new Error("alg differs from algorithm");
  const { payload } = await jwtVerify(token, createLocalJWKSet(keys), {
    issuer: provider.issuer,
    audience: provider.applicationID,
    algorithms: [provider.algorithm],
    requiredClaims: ["sub", "iat", "exp"],
    clockTolerance: 5,
  });
  const { sub, iss, ...custom } = payload;
  return { ...custom, subject: sub, issuer: iss, tokenIdentifier: `${iss}|${sub}` };
}

// The real createClient(...) of @convex-dev/better-auth, its component's
// adapter answered from this server's own Better Auth database.
const { createClient } = await import("@convex-dev/better-auth");
const component = { adapter: { findOne: "adapter.findOne" } };
const authComponent = createClient(component);
function convexCtx(identity) {
  return {
    auth: { getUserIdentity: async () => identity },
    runQuery: async (_fn, { model, where }) => {
      const rows = db[model] ?? [];
      return (
        rows.find((row) =>
          where.every(({ field, value, operator }) => {
            const actual = row[field === "_id" ? "id" : field];
            const have = actual instanceof Date ? actual.getTime() : actual;
            return operator === "gt" ? have > value : have === value;
          }),
        ) ?? null
      );
    },
  };
}

async function asThePerson(convexToken) {
  // What the README tells a Convex function to do with an MCP call.
  const identity = await convexIdentity(convexToken);
  const ctx = convexCtx(identity);
  const sidecarIssuer = JSON.parse(fs.readFileSync(process.env.CONVEX_PROVIDER_FILE, "utf8"))[0]
    .issuer;
  const viaSidecar = identity.issuer === sidecarIssuer;
  const user = viaSidecar ? await authComponent.getAnyUserById(ctx, identity.subject) : null;
  // getAuthUser needs a live session id, which an MCP token does not carry.
  const sessionUser = (await authComponent.safeGetAuthUser(ctx)) ?? null;
  return {
    subject: identity.subject,
    issuer: identity.issuer,
    tokenIdentifier: identity.tokenIdentifier,
    clientId: identity.client_id,
    scope: identity.scope,
    resource: identity.resource,
    user: user ? { id: user.id, email: user.email } : null,
    sessionUser,
  };
}

async function handleMcp(req, res) {
  if (req.method === "OPTIONS") {
    res.writeHead(204, {
      "access-control-allow-origin": "*",
      "access-control-allow-headers": "authorization, content-type, mcp-protocol-version",
    });
    return res.end();
  }
  const auth = req.headers.authorization ?? "";
  // Behind the gateway (enforce mode) a request arrives verified, with the
  // person in X-Sidecar-* headers and no bearer token of the client's.
  const verifiedByGateway = Boolean(req.headers["x-sidecar-user-id"]);
  if (!verifiedByGateway && !auth.toLowerCase().startsWith("bearer ")) {
    res.writeHead(401, {
      "content-type": "application/json",
      "www-authenticate": `Bearer resource_metadata="${process.env.PUBLIC_URL ?? ""}/.well-known/oauth-protected-resource${new URL(req.url, "http://x").pathname}"`,
    });
    return res.end(JSON.stringify({ error: "unauthorized" }));
  }
  const pathname = new URL(req.url, "http://x").pathname;
  if (pathname.startsWith("/api/mcp-self")) {
    // This resource is metadata-only at the sidecar: the app checks tokens.
    try {
      const claims = await verifySidecarToken(
        auth.slice(7).trim(),
        `${process.env.PUBLIC_URL}/api/mcp-self`,
      );
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify({ verifiedBy: "app", claims }));
    } catch (error) {
      res.writeHead(401, {
        "content-type": "application/json",
        "www-authenticate": `Bearer error="invalid_token", resource_metadata="${process.env.PUBLIC_URL}/.well-known/oauth-protected-resource/api/mcp-self"`,
      });
      return res.end(JSON.stringify({ error: "invalid_token", detail: String(error.code ?? error) }));
    }
  }
  if (req.method === "GET" && pathname.endsWith("/echo")) {
    res.writeHead(200, { "content-type": "application/json" });
    return res.end(JSON.stringify({ authorization: auth, headers: req.headers }));
  }
  const identity = {
    userId: req.headers["x-sidecar-user-id"] ?? null,
    clientId: req.headers["x-sidecar-client-id"] ?? null,
    scopes: req.headers["x-sidecar-scopes"] ?? null,
  };
  const convexToken = req.headers["x-sidecar-convex-token"] ?? null;
  const server = new McpServer({ name: "demo-app", version: "1.0.0" });
  server.registerTool(
    "whoami",
    { description: "Who is calling this MCP server, as the sidecar verified it" },
    async () => {
      // The app can also look the user up in its own Better Auth database.
      const user = identity.userId
        ? (await (await auth_.$context).internalAdapter.findUserById(identity.userId))
        : null;
      const result = { ...identity, email: user?.email ?? null, name: user?.name ?? null };
      return { content: [{ type: "text", text: JSON.stringify(result) }] };
    },
  );
  server.registerTool(
    "convex_whoami",
    { description: "Run as the person in Convex with the token the sidecar minted" },
    async () => {
      const result = convexToken
        ? await asThePerson(convexToken).catch((e) => ({ error: String(e.message ?? e) }))
        : { error: "no Convex token" };
      return { content: [{ type: "text", text: JSON.stringify(result) }] };
    },
  );
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on("close", () => {
    transport.close();
    server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res);
}

// The app's own login page, as a Better Auth app has it: the browser signs in
// with Better Auth's client call, then goes to `callbackURL` (Better Auth's
// convention), which is how the sidecar brings the person back.
const loginPage = `<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Sign in</title></head>
<body><main><h1>Sign in</h1>
<form id="f">
<label>Email <input name="email" type="email" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form><p id="error" role="alert"></p></main>
<script>
document.getElementById("f").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const r = await fetch("${basePath}/sign-in/email", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: form.get("email"), password: form.get("password") }),
  });
  if (!r.ok) { document.getElementById("error").textContent = "Wrong email or password"; return; }
  const back = new URLSearchParams(location.search).get("callbackURL") || "/";
  // Only back to this origin, as Better Auth checks callbackURL.
  location.href = new URL(back, location.href).origin === location.origin ? back : "/";
});
</script></body></html>`;

const handler = (req, res) => {
  if (req.url.startsWith(basePath)) {
    return authHandler(req, res);
  }
  if (req.url.startsWith("/login")) {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    return res.end(loginPage);
  }
  if (req.url.startsWith("/echo-headers")) {
    res.writeHead(200, { "content-type": "application/json" });
    return res.end(JSON.stringify(req.headers));
  }
  if (req.url.startsWith("/api/mcp") || req.url.startsWith("/api/admin-mcp")) {
    return handleMcp(req, res);
  }
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    return res.end("ok");
  }
  if (req.method === "POST" && req.url.startsWith("/convex-check")) {
    // Convex's own check of any token, for the tests' refusals.
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", async () => {
      try {
        const identity = await convexIdentity(body.trim());
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ accepted: true, identity }));
      } catch (error) {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ accepted: false, reason: String(error.code ?? error.message) }));
      }
    });
    return;
  }
  if (req.url.startsWith("/redirect-home")) {
    // The app naming its own origin in Location (rewritten by the sidecar).
    res.writeHead(302, { location: `${tls ? "https" : "http"}://${req.headers.host}/home` });
    return res.end();
  }
  res.writeHead(404, { "content-type": "application/json" });
  res.end(JSON.stringify({ error: "not_found", path: req.url }));
};
const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
server.keepAliveTimeout = 30_000;
server.listen(port, "127.0.0.1", () => {
  console.log(`better-auth e2e server listening on http://127.0.0.1:${port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
