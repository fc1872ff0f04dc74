#!/usr/bin/env python3
"""Server CPU per record of candidate RedisStore push layouts, on a private redis-server.

The numbers in BENCHMARKS.md ("Writer batching, and where the time goes") came from:

    redis-server --port 7391 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
    python3 crates/rampart-bench/scripts/redis_push_cost.py 7391 100000 64
    python3 crates/rampart-bench/scripts/redis_push_cost.py 7391 50000 16

Usage: redis_push_cost.py PORT [N] [BATCH]. Sends N records of 389 bytes, BATCH per call,
through each variant (a raw RESP client, no dependency) and prints the server's CPU (INFO cpu,
user + sys) per 10,000 records and INFO commandstats. It FLUSHALLs the server: never point it
at a server holding data.
"""
import hashlib
import socket
import sys
import uuid

PORT = int(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
BATCH = int(sys.argv[3]) if len(sys.argv) > 3 else 64
JSON = (b'{"v":1,"id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","service":"bench","reason":"retries_exhausted",'
        b'"classification":"transient","error":"503 model is overloaded (call 123456)","attempts":4,'
        b'"max_attempts":4,"first_attempt_at":"2026-11-29T03:00:00.000000Z","last_attempt_at":'
        b'"2026-11-29T03:00:01.000000Z","redrive_count":0,"request":null,"truncated":false}')
JSON = JSON + b" " * max(0, 389 - len(JSON))


class Con:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", PORT))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, cmds):
        out = bytearray()
        for args in cmds:
            out += b"*%d\r\n" % len(args)
            for a in args:
                if isinstance(a, str):
                    a = a.encode()
                elif isinstance(a, int):
                    a = str(a).encode()
                out += b"$%d\r\n" % len(a) + a + b"\r\n"
        self.s.sendall(out)
        return [self.read() for _ in cmds]

    def line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.s.recv(1 << 20)
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l

    def read(self):
        l = self.line()
        t = l[:1]
        if t == b"+":
            return l[1:].decode()
        if t == b"-":
            return Exception(l[1:].decode())
        if t == b":":
            return int(l[1:])
        if t == b"$":
            n = int(l[1:])
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.s.recv(1 << 20)
            v, self.buf = self.buf[:n], self.buf[n + 2:]
            return v
        if t == b"*":
            n = int(l[1:])
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(l)

    def one(self, *args):
        r = self.send([args])[0]
        if isinstance(r, Exception):
            raise r
        return r


def cpu(c):
    info = c.one("INFO", "cpu").decode()
    d = dict(l.split(":") for l in info.splitlines() if ":" in l)
    return float(d["used_cpu_user"]) + float(d["used_cpu_sys"])


TYPECHECK = """
local want = {%s}
for i = 1, #want do
  local t = redis.call('TYPE', KEYS[i]).ok
  if want[i] == 'counter' then
    if t == 'string' then
      if not tonumber(redis.call('GET', KEYS[i])) then
        return redis.error_reply('RAMPART_KEYTYPE ' .. i .. ' non-integer string')
      end
    elseif t ~= 'none' then
      return redis.error_reply('RAMPART_KEYTYPE ' .. i .. ' ' .. t)
    end
  elseif t ~= 'none' and t ~= want[i] then
    return redis.error_reply('RAMPART_KEYTYPE ' .. i .. ' ' .. t)
  end
end
"""

# KEYS records, index, inbox, evictions, pending. ARGV cap, entries.
APPEND = TYPECHECK % "'hash', 'zset', 'list', 'counter', 'list'" + """
local n = redis.call('RPUSH', KEYS[3], unpack(ARGV, 2))
local size = redis.call('HLEN', KEYS[1]) + n
return size
"""
APPEND_NOCHECK = """
local n = redis.call('RPUSH', KEYS[3], unpack(ARGV, 2))
return redis.call('HLEN', KEYS[1]) + n
"""
# append + HMGET check against the hash (ids cut out of the entries in Lua)
HYBRID = TYPECHECK % "'hash', 'zset', 'list', 'counter', 'list'" + """
local ids = {}
for i = 2, #ARGV do ids[i - 1] = string.sub(ARGV[i], 1, 36) end
local got = redis.call('HMGET', KEYS[1], unpack(ids))
local n = redis.call('RPUSH', KEYS[3], unpack(ARGV, 2))
return redis.call('HLEN', KEYS[1]) + n
"""
# Current script's core (HMGET + HSET + RPUSH ids + HLEN); ARGV cap, (id, json) pairs
CURRENT = TYPECHECK % "'hash', 'zset', 'list', 'counter'" + """
local cap = tonumber(ARGV[1])
local n = (#ARGV - 1) / 2
local ids = {}
for i = 1, n do ids[i] = ARGV[2 * i] end
local existing = redis.call('HMGET', KEYS[1], unpack(ids))
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('RPUSH', KEYS[3], unpack(ids))
return redis.call('HLEN', KEYS[1])
"""
# exact duplicates: ids + entries; SMISMEMBER inbox ids + HMGET records; SADD + RPUSH
EXACT = TYPECHECK % "'hash', 'zset', 'list', 'counter', 'set'" + """
local n = (#ARGV - 1) / 2
local ids = {}
for i = 1, n do ids[i] = ARGV[1 + i] end
local a = redis.call('SMISMEMBER', KEYS[5], unpack(ids))
local b = redis.call('HMGET', KEYS[1], unpack(ids))
redis.call('SADD', KEYS[5], unpack(ids))
redis.call('RPUSH', KEYS[3], unpack(ARGV, n + 2))
return redis.call('HLEN', KEYS[1])
"""
# plan C: mark ids (types, HMGET records, SMISMEMBER inbox ids, SADD), entries by native RPUSH in MULTI
MARK = TYPECHECK % "'hash', 'zset', 'list', 'counter', 'set'" + """
local a = redis.call('SMISMEMBER', KEYS[5], unpack(ARGV))
local b = redis.call('HMGET', KEYS[1], unpack(ARGV))
redis.call('SADD', KEYS[5], unpack(ARGV))
return redis.call('HLEN', KEYS[1])
"""
# catch-up: move up to ARGV[1] inbox entries (id .. json) into hash + index, dedupe
CATCHUP = TYPECHECK % "'hash', 'zset', 'list'" + """
local es = redis.call('LRANGE', KEYS[3], 0, tonumber(ARGV[1]) - 1)
if #es == 0 then return 0 end
local ids, h, z = {}, {}, {}
for i = 1, #es do ids[i] = string.sub(es[i], 1, 36) end
local have = {}
for i = 1, #es, 1000 do
  local got = redis.call('HMGET', KEYS[1], unpack(ids, i, math.min(i + 999, #es)))
  for j = 1, #got do if got[j] then have[ids[i + j - 1]] = true end end
end
local k, m = 0, 0
for i = 1, #es do
  local id = ids[i]
  if not have[id] then
    have[id] = true
    h[k + 1] = id
    h[k + 2] = string.sub(es[i], 37)
    k = k + 2
    z[m + 1] = '0'
    z[m + 2] = id
    m = m + 2
  end
end
for i = 1, k, 1000 do
  redis.call('HSET', KEYS[1], unpack(h, i, math.min(i + 999, k)))
end
for i = 1, m, 1000 do
  redis.call('ZADD', KEYS[2], unpack(z, i, math.min(i + 999, m)))
end
redis.call('LTRIM', KEYS[3], #es, -1)
return #es
"""


def ids(n):
    return [str(uuid.uuid4()).encode() for _ in range(n)]


def run(name, c, fn):
    c.one("FLUSHALL")
    c.one("CONFIG", "RESETSTAT")
    t0 = cpu(c)
    sent = 0
    while sent < N:
        k = min(BATCH, N - sent)
        fn(k)
        sent += k
    t1 = cpu(c)
    stats = c.one("INFO", "commandstats").decode()
    calls = [l for l in stats.splitlines() if l.startswith("cmdstat_") and "config" not in l and "info" not in l and "flushall" not in l]
    print(f"{name:34s} {((t1 - t0) * 1000) / (N / 10000):7.1f} ms/10k   " + "; ".join(
        l.split(",rejected")[0].replace("cmdstat_", "") for l in calls), flush=True)


def main():
    c = Con()
    shas = {k: c.one("SCRIPT", "LOAD", v).decode() for k, v in
            dict(APPEND=APPEND, APPEND_NOCHECK=APPEND_NOCHECK, CURRENT=CURRENT, EXACT=EXACT, CATCHUP=CATCHUP, MARK=MARK, HYBRID=HYBRID).items()}
    K = ["{p}:records", "{p}:index", "{p}:inbox", "{p}:evictions", "{p}:pending"]

    def lpush(k):
        c.send([("LPUSH", "raw", JSON) for _ in range(k)])

    def rpush(k):
        c.one("RPUSH", "{p}:inbox", *[i + JSON for i in ids(k)])

    def append(k):
        c.one("EVALSHA", shas["APPEND"], 5, *K, 100000000, *[i + JSON for i in ids(k)])

    def hybrid(k):
        c.one("EVALSHA", shas["HYBRID"], 5, *K, 100000000, *[i + JSON for i in ids(k)])

    def append_nocheck(k):
        c.one("EVALSHA", shas["APPEND_NOCHECK"], 5, *K, 100000000, *[i + JSON for i in ids(k)])

    def current(k):
        a = []
        for i in ids(k):
            a += [i, JSON]
        c.one("EVALSHA", shas["CURRENT"], 4, *K[:4], 100000000, *a)

    def exact(k):
        ii = ids(k)
        c.one("EVALSHA", shas["EXACT"], 5, *K[:4], "{p}:inbox_ids", 100000000, *ii, *[i + JSON for i in ii])

    def plan_c(k):
        ii = ids(k)
        c.send([("MULTI",), ("EVALSHA", shas["MARK"], 5, *K[:4], "{p}:inbox_ids", *ii),
                ("RPUSH", "{p}:inbox", *[i + JSON for i in ii]), ("EXEC",)])

    def hset_native(k):
        a = []
        for i in ids(k):
            a += [i, JSON]
        c.one("HSET", "{p}:records", *a)

    for name, fn in [("LPUSH pipelined (raw floor)", lpush), ("native RPUSH variadic", rpush),
                     ("script append (type checks)", append), ("script append (no checks)", append_nocheck), ("script append + HMGET check", hybrid),
                     ("current script", current), ("exact-dup script (set)", exact),
                     ("native HSET variadic", hset_native), ("plan C: MULTI mark-script + RPUSH", plan_c)]:
        run(name, c, fn)

    # catch-up cost: fill inbox with N entries, then catch up 10k at a time
    c.one("FLUSHALL")
    for _ in range(N // 1000):
        c.one("RPUSH", "{p}:inbox", *[i + JSON for i in ids(1000)])
    c.one("CONFIG", "RESETSTAT")
    t0 = cpu(c)
    while c.one("EVALSHA", shas["CATCHUP"], 3, *K[:3], 10000) > 0:
        pass
    t1 = cpu(c)
    print(f"{'catch-up (10k per call)':34s} {((t1 - t0) * 1000) / (N / 10000):7.1f} ms/10k", flush=True)


main()
