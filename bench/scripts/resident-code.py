#!/usr/bin/env python3
"""Which crates' code is resident in a running drover process: reads /proc/PID/pagemap for the
binary's executable mapping (root only), names each resident page by the symbol at its middle
(`nm`), and counts pages per crate. Usage: resident-code.py PID BINARY."""
import bisect
import collections
import re
import struct
import subprocess
import sys

pid, binary = int(sys.argv[1]), sys.argv[2]
resident = []
with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
    for line in open(f"/proc/{pid}/maps"):
        f = line.split()
        if len(f) >= 6 and f[5].endswith("drover") and "x" in f[1]:
            start, end = (int(x, 16) for x in f[0].split("-"))
            for addr in range(start, end, 4096):
                pagemap.seek(addr // 4096 * 8)
                if struct.unpack("Q", pagemap.read(8))[0] >> 63:
                    resident.append(addr - start + int(f[2], 16))
# File offsets to addresses, through the executable LOAD segment.
for line in subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True).stdout.splitlines():
    f = line.split()
    if f and f[0] == "LOAD" and "E" in f[-2]:
        file_off, vaddr = int(f[1], 16), int(f[2], 16)
symbols = []
nm = subprocess.run(["nm", "-n", "--defined-only", "-C", binary], capture_output=True, text=True).stdout
for line in nm.splitlines():
    f = line.split(" ", 2)
    if len(f) == 3 and f[1] in "tTwW":
        symbols.append((int(f[0], 16), f[2]))
addrs = [a for a, _ in symbols]
count = collections.Counter()
for off in resident:
    i = bisect.bisect_right(addrs, off - file_off + vaddr + 2048) - 1
    m = re.match(r"[<_]*([A-Za-z_][A-Za-z0-9_]*)", symbols[i][1]) if i >= 0 else None
    count[m.group(1) if m else "?"] += 1
print(f"resident code: {len(resident)} pages, {len(resident) * 4 / 1024:.1f} MiB")
for name, pages in count.most_common(30):
    print(pages, name)
