"""Writing one visit's work entries to its instrument stream, atomically and once.

Guarantee: for a given (instrument, groupId), at most one ``write`` ever adds entries while the
de-duplication key lives (``dedup_ttl_s``), and when it does it adds one entry per detector
together with the key, all or nothing. Both are done by one server-side script (``FAN_OUT``),
which Redis runs atomically: a concurrent writer of the same visit (say, a second fan-out after a
Kafka rebalance) runs wholly before or after it, and the second finds the key and reports a
duplicate. The consumer group is (re)created by the same script at ``$`` when missing, so a
stream or group lost under a running fan-out is restored and the new entries are delivered, old
ones are not replayed.

All or nothing, although Redis does not roll a script back: the script declares flags (its
``#!lua`` line, Redis 7), so Redis refuses it up-front, before it runs, when it is out of memory
(``maxmemory``), cannot persist or is a read-only replica, rather than failing part-way; inside,
what can fail comes first: the group creation (a stream key of the wrong type fails it, and the
script returns that error having written nothing; its one possible write, a missing stream with
its group, is harmless to repeat), then the XADDs, then the de-duplication key. Redis hands a
script's effects to the AOF and the replicas as one MULTI/EXEC.

Speed: one round trip per visit (EVALSHA: the event's fields are sent once and shared by all
detectors' XADDs inside Redis), through redis-py, so TLS, the ACL user and the client name are
those of every other client (``adapters.redis_client``). The script is loaded by ``load()``
(the fan-out calls it at start-up) and again by redis-py on NOSCRIPT (a Redis restarted, or its
script cache flushed). See BENCHMARKS.md. Not for Redis Cluster (the stream and the key would
live in different slots).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.commands.core import Script
from redis.typing import EncodableT

from prompt_processing.model import naming
from prompt_processing.model.events import NextVisit

FAN_OUT = """#!lua
-- KEYS: de-duplication key, stream. ARGV: group, MAXLEN, TTL s, the visit's JSON, n (field pairs),
-- the n field/value pairs shared by every entry, then the detectors. Returns the entries added.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local created = redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[1], '$', 'MKSTREAM')
if type(created) == 'table' and created.err and string.sub(created.err, 1, 10) ~= 'BUSYGROUP ' then
  return created
end
local n = tonumber(ARGV[5])
local xadd = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*'}
for i = 6, 5 + 2 * n do xadd[#xadd + 1] = ARGV[i] end
xadd[#xadd + 1] = 'detector'
local last = #xadd + 1
for i = 6 + 2 * n, #ARGV do
  xadd[last] = ARGV[i]
  redis.call(unpack(xadd))
end
redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[3])
return #ARGV - 5 - 2 * n
"""


class StreamFanOut:
    """Adds a visit's per-detector entries to ``instrument:<name>`` exactly once."""

    def __init__(self, client: redis.Redis, *, dedup_ttl_s: int, stream_maxlen: int) -> None:
        self._client = client
        self._script: Script = client.register_script(FAN_OUT)
        self._ttl_s = dedup_ttl_s
        self._maxlen = stream_maxlen

    def load(self) -> None:
        """Load the script into Redis' cache now, so the first visit does not pay for it."""
        self._client.script_load(FAN_OUT)

    def write(self, visit: NextVisit, instrument: str, detectors: Sequence[int]) -> int:
        """Add one entry per detector; return how many were added (0 = already fanned out).

        Raises redis.RedisError when Redis fails: ``ResponseError`` for an error reply (no entry and
        no record were written), ``ConnectionError``/``TimeoutError`` for the transport (nothing or
        everything was written). Calling again is safe; a call whose first attempt wrote but whose reply was lost
        returns 0 on the next attempt (redis-py's own retry included).
        """
        fields = visit.stream_fields()
        flat = [x for pair in fields.items() for x in pair]
        keys = [naming.visit_key(instrument, visit.groupId), naming.stream_name(instrument)]
        args: list[EncodableT] = [
            naming.consumer_group(instrument), self._maxlen, self._ttl_s, visit.model_dump_json(), len(fields),
            *flat, *detectors,
        ]  # fmt: skip
        return int(self._script(keys=keys, args=args))
