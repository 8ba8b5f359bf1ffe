"""`python -m worker.bus streams DIR`: export the stream definitions for `nats stream add`."""

from __future__ import annotations

import sys

from worker.bus import streams

if __name__ == "__main__":
    if sys.argv[1:2] != ["streams"]:
        print("usage: python -m worker.bus streams DIR [--prefix P] [--shards K]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(streams.main(sys.argv[2:]))
