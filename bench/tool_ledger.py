"""Benchmark: what the idempotency ledger adds to a built-in tool call.

The same built-in (`place_order`, one DB insert) is called directly, in its own
transaction as a bare call would be, and through `tools_app.services.tool_invoke`
(claim INSERT, argument validation, row lock, the built-in, completion UPDATE, metrics),
interleaved in one run on the same database, each call with a fresh key.
`added_pXX_ms` = ledger pXX − direct pXX.

Runs on a throwaway test database (created, migrated, dropped), so it never touches
your data: `DATABASE_URL=postgres://… .venv/bin/python bench/tool_ledger.py [--calls N]`.
Targets (issue 6): added ≤ 5 ms p50 and ≤ 20 ms p99 on PostgreSQL. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls of each kind (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection, transaction
    from django.test.utils import setup_test_environment

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        from tools_app.builtins import BuiltinContext, builtin_get
        from tools_app.models import ToolDefinition
        from tools_app.services import tool_invoke

        tool = ToolDefinition.objects.create(
            name="place_order",
            description="Place an order.",
            kind="builtin",
            builtin_name="place_order",
            parameters={
                "type": "object",
                "properties": {"item": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
                "required": ["item", "quantity"],
            },
        )
        builtin = builtin_get("place_order")
        assert builtin is not None
        arguments = {"item": "latte", "quantity": 1}

        def direct() -> None:
            ctx = BuiltinContext(
                tool_name="place_order", scope="bench-direct", key=uuid.uuid4().hex, session_id=None, invocation_id=None
            )
            with transaction.atomic():
                builtin.fn(ctx, arguments)

        def ledger() -> None:
            outcome = tool_invoke(tool=tool, arguments=arguments, key=uuid.uuid4().hex, scope="bench-ledger")
            assert outcome.status == "succeeded", outcome.error

        timings: dict[str, list[float]] = {"direct": [], "ledger": []}
        for i in range(args.warmup + args.calls):
            for name, fn in (
                (("direct", direct), ("ledger", ledger)) if i % 2 else (("ledger", ledger), ("direct", direct))
            ):
                t0 = time.perf_counter()
                fn()
                elapsed = (time.perf_counter() - t0) * 1000
                if i >= args.warmup:
                    timings[name].append(elapsed)
        d, lg = timings["direct"], timings["ledger"]
        result = {
            "name": "tool_ledger",
            "direct_p50_ms": round(statistics.median(d), 3),
            "ledger_p50_ms": round(statistics.median(lg), 3),
            "added_p50_ms": round(statistics.median(lg) - statistics.median(d), 3),
            "added_p99_ms": round(percentile(lg, 99) - percentile(d, 99), 3),
            "direct_p99_ms": round(percentile(d, 99), 3),
            "ledger_p99_ms": round(percentile(lg, 99), 3),
            "calls": args.calls,
            "database": connection.vendor,
        }
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
