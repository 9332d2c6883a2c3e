// Next.js rewrites: the app sends the sidecar's OAuth routes to it.
// sidecar-config: SIDECAR_RESOURCES=/api/mcp;mode=metadata-only
//
// With rewrites the app is in front, so the sidecar cannot guard the MCP route (its
// guarded request would come back to the app): run that resource in
// metadata-only mode and verify tokens in the route with the sidecar's JWKS
// (see the README, "Guarding your MCP endpoint"). Point the sidecar's
// SIDECAR_UPSTREAM_URL at the app and SIDECAR_PUBLIC_URL at the public origin.
const SIDECAR = process.env.SIDECAR_INTERNAL_URL ?? "http://127.0.0.1:8080";

/** @type {import('next').NextConfig} */
const nextConfig = {
  async rewrites() {
    return {
      beforeFiles: [
        { source: "/oauth", destination: `${SIDECAR}/oauth` },
        { source: "/oauth/:path*", destination: `${SIDECAR}/oauth/:path*` },
        {
          source: "/.well-known/oauth-authorization-server/oauth",
          destination: `${SIDECAR}/.well-known/oauth-authorization-server/oauth`,
        },
        {
          source: "/.well-known/openid-configuration/oauth",
          destination: `${SIDECAR}/.well-known/openid-configuration/oauth`,
        },
        {
          source: "/.well-known/oauth-protected-resource/api/mcp",
          destination: `${SIDECAR}/.well-known/oauth-protected-resource/api/mcp`,
        },
      ],
    };
  },
};

export default nextConfig;
