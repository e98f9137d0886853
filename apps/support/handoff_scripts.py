"""The Lua scripts behind each handoff transition (``handoffs.HandoffDesk``): each checks the state
and writes the change, the conversation and the events to both streams in one atomic step. They build
no keys of their own (every key comes in KEYS), so any Redis or primary runs them.

Streams are appended with ``MAXLEN ~`` (cheap, approximate trimming); the customer's stream expires
with the session. Return codes: 1 done, 0 nothing to do (already so), -1 no such handoff, -2 no
such session, -3 closed (or nothing to rate), -4 another agent holds it, -5 not taken yet.
"""

# KEYS: session, handoff, messages, open index, inbox, session events
# ARGV: id, created_at, inbox event, session event, inbox max, session max, ttl, 2n, n field/value
#       pairs, then the transcript (one JSON message each)
OPEN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, ''} end
local current = redis.call('HGET', KEYS[1], 'handoff')
if current then return {0, current} end
local n = tonumber(ARGV[8])
local fields = {}
for i = 9, 8 + n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
for i = 9 + n, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
redis.call('HSET', KEYS[1], 'handoff', ARGV[1])
redis.call('HDEL', KEYS[1], 'csat_pending')
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'type', 'handoff_opened', 'data', ARGV[3])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'type', 'handoff_opened', 'data', ARGV[4])
redis.call('EXPIRE', KEYS[6], ARGV[7])
return {1, ARGV[1]}
"""

# The start of TAKE, REPLY and CLOSE (KEYS[1] is the handoff): -1 if it is gone, else its status and
# the agent holding it ('' when none).
_HANDOFF_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, ''} end
local status = redis.call('HGET', KEYS[1], 'status')
local by = redis.call('HGET', KEYS[1], 'taken_by') or ''
"""

# KEYS: handoff, open index, taken index, messages, inbox, session events
# ARGV: id, agent, now, system note, inbox event, session event, inbox max, session max, ttl
TAKE = (
    _HANDOFF_STATE
    + """\
if status == 'closed' then return {-3, by} end
if status == 'taken' then
  if by == ARGV[2] then return {0, by} end
  return {-4, by}
end
redis.call('HSET', KEYS[1], 'status', 'taken', 'taken_by', ARGV[2], 'taken_at', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'type', 'handoff_taken', 'data', ARGV[5])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*', 'type', 'agent_joined', 'data', ARGV[6])
redis.call('EXPIRE', KEYS[6], ARGV[9])
return {1, ARGV[2]}
"""
)

# KEYS: handoff, messages, inbox, session events
# ARGV: agent, message, inbox event, session event, inbox max, session max, ttl, messages max
REPLY = (
    _HANDOFF_STATE
    + """\
if status == 'closed' then return {-3, by} end
if status ~= 'taken' then return {-5, ''} end
if by ~= ARGV[1] then return {-4, by} end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[8]), -1)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'type', 'agent_message', 'data', ARGV[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'type', 'agent_message', 'data', ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[7])
return {1, by}
"""
)

# KEYS: handoff, open index, taken index, closed index, messages, session, inbox, session events
# ARGV: id, agent, now, retention, system note, inbox event, session event (rating asked),
#       session event (not asked), inbox max, session max, ttl
CLOSE = (
    _HANDOFF_STATE
    + """\
if status == 'closed' then return {0, by} end
if status == 'taken' and by ~= ARGV[2] then return {-4, by} end
local rated = status == 'taken'
redis.call('HSET', KEYS[1], 'status', 'closed', 'closed_by', ARGV[2], 'closed_at', ARGV[3])
redis.call('RPUSH', KEYS[5], ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[5], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))
if redis.call('HGET', KEYS[6], 'handoff') == ARGV[1] then
  redis.call('HDEL', KEYS[6], 'handoff')
  if rated then redis.call('HSET', KEYS[6], 'csat_pending', ARGV[1]) end
end
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[9], '*', 'type', 'handoff_closed', 'data', ARGV[6])
local event = ARGV[8]
if rated then event = ARGV[7] end
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[10], '*', 'type', 'handoff_closed', 'data', event)
redis.call('EXPIRE', KEYS[8], ARGV[11])
return {1, by}
"""
)

# KEYS: session, handoff, messages, inbox | ARGV: id, message, inbox event, inbox max, messages max
CUSTOMER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
if redis.call('HGET', KEYS[1], 'handoff') ~= ARGV[1] then return 0 end
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'open' and status ~= 'taken' then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'type', 'customer_message', 'data', ARGV[3])
return 1
"""

# KEYS: session, handoff, inbox | ARGV: id, rating, comment ('' = none), now, inbox event, inbox max
CSAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
if redis.call('HGET', KEYS[1], 'csat_pending') ~= ARGV[1] then return -3 end
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('HEXISTS', KEYS[2], 'csat') == 1 then return -3 end
redis.call('HSET', KEYS[2], 'csat', ARGV[2], 'csat_at', ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'csat_comment', ARGV[3]) end
redis.call('HDEL', KEYS[1], 'csat_pending')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'type', 'csat_recorded', 'data', ARGV[5])
return 1
"""

# KEYS: session, handoff, inbox | ARGV: id, email, now, inbox event, inbox max
CONTACT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
if redis.call('HGET', KEYS[1], 'handoff') ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 0 then return -3 end
redis.call('HSET', KEYS[2], 'contact_email', ARGV[2], 'contact_at', ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'type', 'contact_left', 'data', ARGV[4])
return 1
"""

# KEYS: handoff, inbox, session events
# ARGV: now, timeout, inbox event, session event, inbox max, session max, ttl
NO_AGENT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'open' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'no_agent_at') == 1 then return 0 end
local created = tonumber(redis.call('HGET', KEYS[1], 'created_at'))
if tonumber(ARGV[1]) - created < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'no_agent_at', ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'type', 'no_agent', 'data', ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'type', 'no_agent', 'data', ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[7])
return 1
"""
