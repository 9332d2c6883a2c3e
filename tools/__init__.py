"""The process harness the tests, `make demo` and `make bench` share: real
processes (the sidecar, a local upstream, the Better Auth fixture in Node,
redis-server, nginx) on free loopback ports, an OAuth client and a signed-in
browser to drive them, the shared Better Auth test values, and the MCP SDK's
token storage kept in memory."""
