from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shopfloor.agent.errors import StoreError
from shopfloor.agent.seqstore import DB_NAME, SeqStore


async def test_new_store_has_a_stream_and_counts_from_one(tmp_path: Path) -> None:
    async with await SeqStore.open(tmp_path) as store:
        assert len(store.stream) == 32
        int(store.stream, 16)
        assert store.epoch == 1
        assert [await store.next_seq() for _ in range(3)] == [1, 2, 3]
    assert (tmp_path / DB_NAME).is_file()


async def test_reopen_keeps_stream_bumps_epoch_and_never_reuses(tmp_path: Path) -> None:
    async with await SeqStore.open(tmp_path, block_size=10) as store:
        stream = store.stream
        first = [await store.next_seq() for _ in range(25)]
    async with await SeqStore.open(tmp_path, block_size=10) as store:
        assert store.stream == stream
        assert store.epoch == 2
        second = await store.next_seq()
    assert first == list(range(1, 26))
    assert second > max(first)  # the rest of the block is skipped, never reused


async def test_new_data_dir_is_a_new_stream(tmp_path: Path) -> None:
    async with await SeqStore.open(tmp_path / "a") as a, await SeqStore.open(tmp_path / "b") as b:
        assert a.stream != b.stream


async def test_never_reuses_after_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, json, os, signal, sys
        from pathlib import Path
        from shopfloor.agent.seqstore import SeqStore

        async def main():
            store = await SeqStore.open(Path({str(tmp_path)!r}), block_size=7)
            seqs = [await store.next_seq() for _ in range(17)]
            print(json.dumps({{"stream": store.stream, "seqs": seqs}}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == -signal.SIGKILL, stderr
    handed_out = json.loads(stdout)
    async with await SeqStore.open(tmp_path, block_size=7) as store:
        assert store.stream == handed_out["stream"]
        assert store.epoch == 2
        after = await store.next_seq()
    assert after > max(handed_out["seqs"])


async def test_foreign_schema_is_a_store_error(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        await SeqStore.open(tmp_path)


async def test_closed_store_refuses(tmp_path: Path) -> None:
    store = await SeqStore.open(tmp_path, block_size=1)
    await store.next_seq()
    await store.close()
    await store.close()
    with pytest.raises(StoreError):
        await store.next_seq()
