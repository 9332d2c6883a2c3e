// One connect of the v2 TypeScript MCP SDK client (@modelcontextprotocol/client,
// the one Claude uses) to an MCP server behind the sidecar, driven headlessly.
//
//   node connect.mjs <mcp-url> <state-file> [--forget-tokens]
//
// Everything OAuth is the SDK's own code: discovery from the 401, dynamic
// client registration, the authorization URL, the token exchange. Only the
// provider's storage and its redirect hook are here:
//
// - When the SDK sends the person to the authorization URL, it is printed on
//   stdout as one JSON line, {"authorize": "<url>"}; the redirect back (the
//   callback URL with code and state) is read from stdin as one line.
// - Then the tool `whoami` is called and its result printed as one JSON line,
//   {"whoami": {...}, "clientId": ..., "scope": ...}.
// - The state file keeps the client information (so the next run reuses the
//   same registration, as Claude does) and the redirect URI it registered.
//   The tokens are kept too, unless --forget-tokens: then the next run
//   authorizes again, as a fresh connect does.
//
// Diagnostics go to stderr; a failure exits non-zero.

import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { createInterface } from "node:readline";

import {
  Client,
  StreamableHTTPClientTransport,
  UnauthorizedError,
} from "@modelcontextprotocol/client";

const args = process.argv.slice(2);
const forgetTokens = args.includes("--forget-tokens") || process.env.MCP_FORGET_TOKENS === "1";
const [mcpUrl, statePath] = args.filter((a) => !a.startsWith("--"));
if (!mcpUrl || !statePath) {
  process.stderr.write("usage: node connect.mjs <mcp-url> <state-file> [--forget-tokens]\n");
  process.exit(2);
}

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

function loadState() {
  try {
    return JSON.parse(readFileSync(statePath, "utf8"));
  } catch (error) {
    if (error.code === "ENOENT") return {};
    throw error;
  }
}

function saveState() {
  const kept = { ...state };
  if (forgetTokens) delete kept.tokens;
  writeFileSync(statePath, `${JSON.stringify(kept, null, 2)}\n`);
}

// A loopback port nobody listens on; the person's browser never reaches it
// (the test passes the Location back on stdin).
async function freePort() {
  return await new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const lines = createInterface({ input: process.stdin });
const lineIterator = lines[Symbol.asyncIterator]();
async function readLine() {
  const { value, done } = await lineIterator.next();
  if (done) throw new Error("stdin closed before the redirect back was written");
  return value.trim();
}

const state = loadState();
state.redirectUrl ??= `http://127.0.0.1:${await freePort()}/callback`;

let authorizationUrl = null;
let codeVerifier = null;
let discoveryState = undefined;
let expectedState = null;

const provider = {
  get redirectUrl() {
    return state.redirectUrl;
  },
  get clientMetadata() {
    return {
      client_name: "Claude (v2 TypeScript MCP SDK client)",
      redirect_uris: [state.redirectUrl],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  },
  state() {
    expectedState = randomBytes(16).toString("base64url");
    return expectedState;
  },
  clientInformation() {
    return state.clientInformation;
  },
  saveClientInformation(info) {
    state.clientInformation = info;
    saveState();
  },
  tokens() {
    return state.tokens;
  },
  saveTokens(tokens) {
    state.tokens = tokens;
    saveState();
  },
  redirectToAuthorization(url) {
    authorizationUrl = url;
    emit({ authorize: url.href });
  },
  saveCodeVerifier(verifier) {
    codeVerifier = verifier;
  },
  codeVerifier() {
    if (!codeVerifier) throw new Error("no code verifier saved");
    return codeVerifier;
  },
  // Within this one process the discovery survives the redirect round-trip.
  saveDiscoveryState(discovered) {
    discoveryState = discovered;
  },
  discoveryState() {
    return discoveryState;
  },
  invalidateCredentials(scope) {
    process.stderr.write(`the SDK invalidated: ${scope}\n`);
    if (scope === "all" || scope === "client") delete state.clientInformation;
    if (scope === "all" || scope === "tokens") delete state.tokens;
    if (scope === "all" || scope === "verifier") codeVerifier = null;
    if (scope === "all" || scope === "discovery") discoveryState = undefined;
    saveState();
  },
};

function newTransport() {
  return new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider });
}

async function main() {
  let client = new Client({ name: "claude-sdk-consent-test", version: "1.0.0" });
  let transport = newTransport();
  try {
    await client.connect(transport);
  } catch (error) {
    if (!(error instanceof UnauthorizedError) || !authorizationUrl) throw error;
    const back = new URL(await readLine());
    if (back.searchParams.get("state") !== expectedState) {
      throw new Error(`the redirect back carries state ${back.searchParams.get("state")}`);
    }
    await transport.finishAuth(back.searchParams);
    await client.close().catch(() => {});
    client = new Client({ name: "claude-sdk-consent-test", version: "1.0.0" });
    transport = newTransport();
    await client.connect(transport);
  }
  const result = await client.callTool({ name: "whoami", arguments: {} });
  const text = result.content?.find((c) => c.type === "text")?.text;
  emit({
    whoami: text ? JSON.parse(text) : null,
    isError: result.isError ?? false,
    clientId: state.clientInformation?.client_id ?? null,
    scope: state.tokens?.scope ?? null,
    refreshToken: Boolean(state.tokens?.refresh_token),
  });
  await client.close();
  saveState();
}

try {
  await main();
  lines.close();
  process.exit(0);
} catch (error) {
  process.stderr.write(`${error?.stack ?? error}\n`);
  process.exit(1);
}
