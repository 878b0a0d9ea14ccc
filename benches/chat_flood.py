"""The chat relay under a flood of empty lines: N reading members, one sends
64 KiB of newlines, another then sends a line; prints how long until every
reader has that line. Loopback only, bounded.

    python3 benches/chat_flood.py target/release/examples/chat epoll
"""
import socket, subprocess, threading, time, sys
p = subprocess.Popen([sys.argv[1], "--addr", "127.0.0.1:0", "--backend", sys.argv[2]], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
addr = p.stdout.readline().decode().split()[2]; host, port = addr.rsplit(":", 1); port = int(port)
N = 20
ms = [socket.create_connection((host, port)) for _ in range(N + 2)]
time.sleep(0.3)
flooder, newcomer, readers = ms[0], ms[1], ms[2:]
got = {}
def rd(i, s):
    buf = b""
    while b"hello\n" not in buf[-64:]:
        d = s.recv(1 << 16)
        if not d: break
        buf += d
    got[i] = time.time()
ts = [threading.Thread(target=rd, args=(i, s)) for i, s in enumerate(readers)]
[t.start() for t in ts]
t0 = time.time()
flooder.sendall(b"\n" * 65536)
newcomer.sendall(b"hello\n")
[t.join() for t in ts]
print(sys.argv[2], "the line after a 64 KiB newline flood reached all", N, "readers after %.1f ms (max), %.1f ms (min)" % ((max(got.values()) - t0) * 1e3, (min(got.values()) - t0) * 1e3))
p.kill()
