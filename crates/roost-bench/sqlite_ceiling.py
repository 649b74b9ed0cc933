import sqlite3, time, os, sys
path = "/tmp/roost-ceiling.db"
for suffix in ("", "-wal", "-shm"):
    try: os.remove(path + suffix)
    except FileNotFoundError: pass
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE entries (conversation_id BLOB, seq INTEGER, payload BLOB, created_at INTEGER, PRIMARY KEY (conversation_id, seq))")
payload = os.urandom(256); conv = os.urandom(16)
for batch in (1, 10, 100):
    n = 3000 if batch == 1 else 20000
    start = time.perf_counter(); seq = 0
    while seq < n:
        db.execute("BEGIN")
        for _ in range(batch):
            seq += 1
            db.execute("INSERT INTO entries VALUES (?, ?, ?, ?)", (conv + bytes([batch]), seq, payload, 0))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    print(f"batch {batch:>3}: {n/elapsed:,.0f} rows/s ({n/batch/elapsed:,.0f} commits/s)")
