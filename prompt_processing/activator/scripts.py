"""Server-side scripts of the work queue: each checks that the calling activator still owns the
entry and acts on it in the same atomic step, so an activator that lost an entry (another
reclaimed it after a Redis outage or a long pause) can neither refresh it, hand it back,
nor record an outcome for it.

Loaded through redis-py's ``Script`` (EVALSHA, reloaded on NOSCRIPT after a Redis restart).
Ownership is the consumer name XPENDING reports for the entry.
"""

from __future__ import annotations

import redis
from redis.commands.core import Script

_OWNS = """
local function owns(stream, group, id, consumer)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  return #p > 0 and p[1][2] == consumer
end
"""

TOUCH = _OWNS + """
-- KEYS: stream. ARGV: group, consumer, id. Reset the entry's idle time; 1 if ours, else 0.
if not owns(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

HAND_BACK = _OWNS + """
-- KEYS: stream. ARGV: group, consumer, parking consumer, then (id, idle ms) pairs.
-- Give each entry still ours to the parking consumer with that idle time; return how many.
local n = 0
for i = 4, #ARGV, 2 do
  if owns(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[i], 'IDLE', ARGV[i + 1], 'JUSTID')
    n = n + 1
  end
end
return n
"""

FINISH = _OWNS + """
-- KEYS: stream, results stream. ARGV: group, consumer, id, results MINID, then field/value pairs.
-- If the entry is still ours: record the outcome and acknowledge, together; 1. Else 0, nothing done.
if not owns(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 0 end
redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


class QueueScripts:
    """The scripts registered on one client."""

    def __init__(self, client: redis.Redis) -> None:
        self.touch: Script = client.register_script(TOUCH)
        self.hand_back: Script = client.register_script(HAND_BACK)
        self.finish: Script = client.register_script(FINISH)
