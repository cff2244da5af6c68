"""The micro-batcher alone: length-sorted batches under the token budget, abandoned rows skipped, a failing
batch failing only its own rows, shutdown finishing the queue."""

from __future__ import annotations

import asyncio

import pytest

from mtpf.serve.batching import MicroBatcher


def run(coroutine):
    return asyncio.run(coroutine)


def test_rows_of_many_requests_share_length_sorted_batches_under_the_budget():
    seen: list[list[str]] = []

    def forward(rows):
        seen.append(list(rows))
        return [row.upper() for row in rows]

    async def scenario():
        batcher = MicroBatcher(forward, max_batch_tokens=12, max_wait_ms=30)
        batcher.start()
        first = batcher.submit(["ccc", "a"], [3, 1])
        second = batcher.submit(["bb", "dddd"], [2, 4])
        answers = await asyncio.gather(*first, *second)
        await batcher.stop()
        return answers

    assert run(scenario()) == ["CCC", "A", "BB", "DDDD"]  # each request gets its own rows back, in order
    assert seen == [["a", "bb", "ccc"], ["dddd"]]  # sorted by length; 4 rows x 4 tokens would exceed 12


def test_abandoned_rows_cost_no_forward():
    seen: list[str] = []

    async def scenario():
        batcher = MicroBatcher(lambda rows: seen.extend(rows) or rows, max_wait_ms=30)
        batcher.start()
        kept, dropped = batcher.submit(["kept"], [1]), batcher.submit(["dropped"], [1])
        dropped[0].cancel()  # the client left before the batch formed
        result = await kept[0]
        await batcher.stop()
        return result

    assert run(scenario()) == "kept" and seen == ["kept"]


def test_a_failing_batch_fails_only_its_own_rows():
    def forward(rows):
        if "boom" in rows:
            raise RuntimeError("the forward broke")
        return rows

    async def scenario():
        batcher = MicroBatcher(forward, max_batch_tokens=1, max_wait_ms=30)  # one row per batch
        batcher.start()
        good, bad = batcher.submit(["fine"], [1]), batcher.submit(["boom"], [1])
        outcomes = await asyncio.gather(good[0], bad[0], return_exceptions=True)
        later = await batcher.submit(["after"], [1])[0]  # the worker survives
        await batcher.stop()
        return outcomes, later

    (good, bad), later = run(scenario())
    assert good == "fine" and isinstance(bad, RuntimeError) and later == "after"


def test_stop_finishes_queued_rows_first():
    async def scenario():
        batcher = MicroBatcher(lambda rows: rows, max_wait_ms=200)
        batcher.start()
        futures = batcher.submit(["a", "b", "c"], [1, 1, 1])
        await batcher.stop()
        return [f.result() for f in futures]

    assert run(scenario()) == ["a", "b", "c"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_hosts(host):
    from mtpf.serve.server import is_loopback

    assert is_loopback(host) and not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_a_failing_tenant_fails_only_its_own_rows():
    """Rows of two tenants share a batch; the forward fails whenever tenant "bad" is in it: the batch is rerun tenant
    by tenant, so the good tenant's rows are answered. An exception returned as one row's answer fails that row."""
    batches: list[list[str]] = []

    def forward(rows):
        batches.append(list(rows))
        if any(row.startswith("bad") for row in rows):
            raise KeyError(1)
        return [ValueError("just this row") if row == "good-odd" else row.upper() for row in rows]

    async def scenario():
        batcher = MicroBatcher(forward, max_wait_ms=30, tenant_of=lambda row: row.split("-")[0])
        batcher.start()
        futures = batcher.submit(["good-1", "bad-1", "good-2", "good-odd"], [1, 1, 1, 1])
        answers = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.stop()
        return answers

    good1, bad, good2, odd = run(scenario())
    assert (good1, good2) == ("GOOD-1", "GOOD-2")
    assert isinstance(bad, KeyError) and isinstance(odd, ValueError)
    assert len(batches) == 3 and sorted(map(len, batches)) == [1, 3, 4]  # the mix, then each tenant alone


def test_a_server_without_a_budget_takes_its_engines_own():
    """`--max_batch_tokens 0` and no `--max_wait_ms` (the defaults): each backend's measured budget and wait
    (bench/serve_budget.py, bench/RESULTS.md section 12), not one number for both; an explicit value wins."""
    from types import SimpleNamespace

    from mtpf.serve.engine import Engine
    from mtpf.serve.onnx_engine import OnnxEngine
    from mtpf.serve.registry import AppRegistry
    from mtpf.serve.routes import ServeOptions, ServerState

    for engine_class in (Engine, OnnxEngine):
        engine = SimpleNamespace(
            run=lambda rows: rows, batch_tokens=engine_class.batch_tokens, batch_wait_ms=engine_class.batch_wait_ms
        )
        state = ServerState(engine, ServeOptions(), AppRegistry(None))
        assert state.batcher.max_batch_tokens == engine_class.batch_tokens
        assert state.batcher.max_wait == engine_class.batch_wait_ms / 1000
        assert ServerState(engine, ServeOptions(max_wait_ms=0), AppRegistry(None)).batcher.max_wait == 0
        assert ServerState(engine, ServeOptions(max_batch_tokens=64), AppRegistry(None)).batcher.max_batch_tokens == 64
    assert Engine.batch_tokens != OnnxEngine.batch_tokens
