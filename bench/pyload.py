"""Fallback load generator when wrk is not installed: N connections, each
sending requests back to back for a fixed time. Prints: rps p50_ms p99_ms errors."""

from __future__ import annotations

import ast
import asyncio
import sys
import time

import aiohttp


async def main(url: str, concurrency: int, seconds: float, headers: dict[str, str]) -> None:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with session.get(url) as response:
                        await response.read()
                        if response.status >= 400:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    n = len(latencies)
    p50 = latencies[n // 2] if n else 0.0
    p99 = latencies[min(n - 1, int(n * 0.99))] if n else 0.0
    print(f"{n / seconds:.1f} {p50:.3f} {p99:.3f} {errors}")


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), ast.literal_eval(sys.argv[4]))
    )
