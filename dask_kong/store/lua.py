"""Lua scripts that `RedisStore` runs on the server, one named constant each.

A script runs atomically: no other client's command runs between its steps. That is what
makes "did my SADD complete the set?" a question with exactly one "yes" however many
workers (or duplicate deliveries of one worker) ask at once. Keys always arrive in KEYS[]
(never built inside a script) so the scripts stay correct on Redis Cluster, where every
key of a run shares one hash slot.
"""

from __future__ import annotations

# Marks finished parents in the fan-in sets of their children: all the marks of one commit
# in one call, so a commit stays one round-trip however many fan-ins it reports to.
#
# For the i-th mark (i = 1..n):
#   KEYS[2i-1]   the child's fan-in set of finished parent ids (constants.fan_in_key)
#   KEYS[2i]     the child's ready claim: "<token>:<parent>" of the commit and parent
#                that made it ready
#   ARGV[3i]     the parent id reported finished
#   ARGV[3i+1]   the child's in-degree (how many parents it has)
#   ARGV[3i+2]   "1" when the mark retakes (FanIn.retake: a re-invoked branch), else "0"
# and for all marks:
#   ARGV[1]      TTL in seconds given to both keys
#   ARGV[2]      token of the calling commit; the caller reuses it when it retries
#
# Returns a list of n integers: 1 when this mark made the child ready, else 0.
#
# "Ready" goes only to the caller whose SADD added its parent AND brought SCARD to the
# in-degree: a parent delivered twice adds nothing the second time, so exactly one parent
# continues. The claim covers one more case: a commit whose reply was lost (connection
# dropped after the server ran it) is retried with the same token; its SADD then adds
# nothing, but the claim holds its token, so the retry still learns it won. A duplicate
# delivery of that parent is a different commit with a different token and stays at 0.
# A retaking mark (a re-invoked branch, after its worker was lost) is ready too when the
# claim names its parent: the lost worker's mark of that parent completed the set.
MARK_PARENTS_DONE = """
local ttl = tonumber(ARGV[1])
local token = ARGV[2]
local ready = {}
for i = 1, #KEYS / 2 do
  local parents = KEYS[2 * i - 1]
  local claim = KEYS[2 * i]
  local parent = ARGV[3 * i]
  local mine = token .. ':' .. parent
  local added = redis.call('SADD', parents, parent)
  redis.call('EXPIRE', parents, ttl)
  ready[i] = 0
  if added == 1 then
    if redis.call('SCARD', parents) == tonumber(ARGV[3 * i + 1]) then
      redis.call('SET', claim, mine, 'EX', ttl)
      ready[i] = 1
    end
  else
    local holder = redis.call('GET', claim)
    if holder == mine then
      ready[i] = 1
    elseif holder and ARGV[3 * i + 2] == '1' then
      local suffix = ':' .. parent
      if string.sub(holder, -string.len(suffix)) == suffix then
        ready[i] = 1
      end
    end
  end
end
return ready
"""

# Records that workers are alive, stamped with the server's clock so that workers on
# different machines (Lambda) are judged by one clock, not by their own.
# Nothing is recorded unless the run is live (its client opened it and has not deleted
# its keys): a straggler's last beat must not recreate a deleted run's hash.
#   KEYS[1]      the run's heartbeat hash: worker id -> "<unix time>:<task>"
#   KEYS[2]      the run's live marker (Store.open_run)
#   ARGV[1]      TTL in seconds of the hash and, renewed while workers beat, of the
#                live marker (a run longer than the TTL must not close itself)
#   ARGV[2k]     id of the k-th worker (k = 1..n)
#   ARGV[2k+1]   the task that worker is running (-1, store.base.ENDED: it ended)
# Returns n, or 0 when the run is not live.
# A worker's entry that says it ended is never overwritten: a beat its heartbeat thread
# sent before the end may arrive after it.
HEARTBEAT = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
local now = redis.call('TIME')
local stamp = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
for i = 2, #ARGV, 2 do
  local last = redis.call('HGET', KEYS[1], ARGV[i])
  if not (last and string.sub(last, -3) == ':-1') then
    redis.call('HSET', KEYS[1], ARGV[i], stamp .. ':' .. ARGV[i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
return (#ARGV - 1) / 2
"""
