#!/usr/bin/env python3
"""Reads every file of a directory once: open + read to the end + close, by THREADS threads in
one process (no process per file, as a data loader's workers read a training set). Prints one
JSON line: files, bytes, seconds, files_per_s, bytes_per_s. Used by scripts/bench-fuse.sh; a
measuring tool, not a test.

usage: smallfiles-read.py DIR [THREADS]
"""

import json
import os
import sys
import threading
import time


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    names = sorted(os.listdir(root))
    paths = [os.path.join(root, n) for n in names]
    total = [0] * threads
    errors = []

    def worker(i: int) -> None:
        n = 0
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            for p in paths[i::threads]:
                fd = os.open(p, os.O_RDONLY)
                try:
                    while True:
                        got = os.readv(fd, [view])
                        if got == 0:
                            break
                        n += got
                finally:
                    os.close(fd)
        except OSError as e:
            errors.append(f"{e}")
        total[i] = n

    started = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    secs = time.perf_counter() - started
    if errors:
        print(f"smallfiles-read: {errors[0]}", file=sys.stderr)
        return 1
    nbytes = sum(total)
    print(json.dumps({
        "files": len(paths),
        "bytes": nbytes,
        "seconds": secs,
        "files_per_s": len(paths) / secs,
        "bytes_per_s": nbytes / secs,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
