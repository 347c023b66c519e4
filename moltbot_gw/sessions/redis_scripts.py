"""The Lua scripts of the Redis session store (``redis_store.py``): each change to a session
— its entry in the agent's hash, its place in the by-time sorted set, its transcript stream —
is one script, so Redis applies it whole or not at all and another gateway never sees half.

Transcript keys are built inside the scripts from a prefix and the entry's session id: the
store targets one Redis server (or a primary), not a cluster.
"""
from __future__ import annotations

from moltbot_gw.redis.connection import LuaScript

# Helpers shared by the scripts that touch transcripts.
_COMMON = r"""
local function record_of(item)
  local fields = item[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'r' then return fields[i + 1] end
  end
  return nil
end

local function decoded(raw)
  if raw == nil then return nil end
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' then return value end
  return nil
end

local function new_header(entry, session_key)
  return cjson.encode({type = 'session', sessionId = entry.sessionId,
                       sessionKey = session_key, createdAt = entry.createdAt})
end

-- Keep the header, a compaction marker and the newest whole turns within keep_bytes (as the
-- file store's compact_transcript does). Returns the bytes dropped and the new size.
local function compact(stream, entry, session_key, keep_bytes, now)
  local header = nil
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #first > 0 then
    local raw = record_of(first[1])
    local record = decoded(raw)
    if record and record.type == 'session' then header = raw end
  end
  header = header or new_header(entry, session_key)
  local newest_first = {}
  local kept_bytes = 0
  local last = '+'
  local full = false
  while not full do
    local page = redis.call('XREVRANGE', stream, last, '-', 'COUNT', 64)
    if #page == 0 then break end
    for _, item in ipairs(page) do
      local raw = record_of(item)
      if raw then
        kept_bytes = kept_bytes + #raw + 1
        if kept_bytes > keep_bytes then full = true break end
        table.insert(newest_first, raw)
      end
    end
    last = '(' .. page[#page][1]
  end
  local kept = {}
  for i = #newest_first, 1, -1 do
    local record = decoded(newest_first[i])
    if record and record.type ~= 'session' and record.type ~= 'compaction' and
       (#kept > 0 or (record.type == 'message' and record.role == 'user')) then
      table.insert(kept, newest_first[i])
    end
  end
  local old_size = tonumber(entry.transcriptBytes) or 0
  redis.call('DEL', stream)
  local marker = cjson.encode({type = 'compaction', ts = now, reason = 'maxTranscriptBytes'})
  local size = #header + #marker + 2
  redis.call('XADD', stream, '*', 'r', header)
  redis.call('XADD', stream, '*', 'r', marker)
  for _, raw in ipairs(kept) do
    redis.call('XADD', stream, '*', 'r', raw)
    size = size + #raw + 1
  end
  return math.max(0, old_size - size), size
end
"""

# KEYS: index hash, by-time zset, agents set, lease key (the hash again without a lease);
# to free the lock with the turn (the run's last write), also the release channel and the
# mark that someone waits (session_lock.RELEASE's steps: delete, publish if marked).
# ARGV: session key, lease token or '', new entry JSON, now ms, model or '', input, output,
# total tokens, transcript key prefix, maxTranscriptBytes, bytes kept by a compaction,
# agent id, then the turn's records (JSON). Returns {entry JSON, bytes dropped or -1, created}.
RECORD_TURN = LuaScript(_COMMON + r"""
local session_key = ARGV[1]
if ARGV[2] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[2] then
  return redis.error_reply('FENCED the session lease is no longer held')
end
local raw = redis.call('HGET', KEYS[1], session_key)
local created = 0
local entry
if raw then entry = cjson.decode(raw) else entry = cjson.decode(ARGV[3]); created = 1 end
local now = tonumber(ARGV[4])
local dropped = -1
if #ARGV >= 13 then
  local stream = ARGV[9] .. entry.sessionId
  local turn_bytes = 0
  for i = 13, #ARGV do turn_bytes = turn_bytes + #ARGV[i] + 1 end
  local size = tonumber(entry.transcriptBytes) or 0
  if redis.call('EXISTS', stream) == 0 then
    local header = new_header(entry, session_key)
    redis.call('XADD', stream, '*', 'r', header)
    size = #header + 1
  elseif size + turn_bytes > tonumber(ARGV[10]) then
    dropped, size = compact(stream, entry, session_key, tonumber(ARGV[11]), now)
  end
  for i = 13, #ARGV do redis.call('XADD', stream, '*', 'r', ARGV[i]) end
  entry.transcriptBytes = size + turn_bytes
end
entry.updatedAt = math.max(now, entry.updatedAt)
if ARGV[5] ~= '' then entry.model = ARGV[5] end
entry.inputTokens = (entry.inputTokens or 0) + tonumber(ARGV[6])
entry.outputTokens = (entry.outputTokens or 0) + tonumber(ARGV[7])
entry.totalTokens = (entry.totalTokens or 0) + tonumber(ARGV[8])
local encoded = cjson.encode(entry)
redis.call('HSET', KEYS[1], session_key, encoded)
redis.call('ZADD', KEYS[2], entry.updatedAt, session_key)
redis.call('SADD', KEYS[3], ARGV[12])
if #KEYS >= 6 and ARGV[2] ~= '' then
  redis.call('DEL', KEYS[4])
  if redis.call('DEL', KEYS[6]) == 1 then redis.call('PUBLISH', KEYS[5], session_key) end
end
return {encoded, dropped, created}
""")

# The start of a history read in one round trip. KEYS: index hash. ARGV: session key,
# transcript key prefix, page size, then the oldest and newest entry ids and the session id
# of this process's cached tail of the transcript ('' without one). Returns {} (no entry),
# {entry JSON} (no readable session id), {entry JSON, 1, the entries after the cached newest
# (XRANGE, at most a page)} while the session is the cached one and its oldest entry still
# exists, else {entry JSON, 0, the newest page (XREVRANGE)}.
HISTORY_HEAD = LuaScript(_COMMON + r"""
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {} end
local entry = decoded(raw)
if not entry or type(entry.sessionId) ~= 'string' then return {raw} end
local stream = ARGV[2] .. entry.sessionId
if ARGV[4] ~= '' and entry.sessionId == ARGV[6] and
   #redis.call('XRANGE', stream, ARGV[4], ARGV[4]) == 1 then
  return {raw, 1, redis.call('XRANGE', stream, '(' .. ARGV[5], '+', 'COUNT', ARGV[3])}
end
return {raw, 0, redis.call('XREVRANGE', stream, '+', '-', 'COUNT', ARGV[3])}
""")

# KEYS: index hash, by-time zset, agents set. ARGV: session key, new entry JSON, its
# updatedAt, agent id. Returns {entry JSON, created}.
GET_OR_CREATE = LuaScript(r"""
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then return {raw, 0} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[4])
return {ARGV[2], 1}
""")

# KEYS: index hash, by-time zset. ARGV: session key, new entry JSON, its updatedAt.
# The old transcript stays (as the file store keeps the old file). Returns 1 if it existed.
RESET = LuaScript(r"""
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
""")

# KEYS: index hash, by-time zset. ARGV: session key, transcript key prefix, deleted-key
# prefix, now ms, seconds the set-aside transcript is kept. Returns 1 if it existed.
DELETE = LuaScript(_COMMON + r"""
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local entry = decoded(raw)
if entry and type(entry.sessionId) == 'string' then
  local stream = ARGV[2] .. entry.sessionId
  if redis.call('EXISTS', stream) == 1 then
    local aside = ARGV[3] .. entry.sessionId .. ':' .. ARGV[4]
    redis.call('RENAME', stream, aside)
    redis.call('EXPIRE', aside, ARGV[5])
  end
end
return 1
""")

# KEYS: index hash, by-time zset. ARGV: maxSessionsPerAgent, idle cutoff ms or '', the key
# never taken or '', transcript key prefix, '1' for a dry run. Removes the idle sessions,
# then the least recently updated beyond the limit, with their transcripts; returns the keys
# removed (or that would be).
PRUNE = LuaScript(_COMMON + r"""
local keep = ARGV[3]
local victims = {}
local chosen = {}
if ARGV[2] ~= '' then
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])) do
    if key ~= keep then table.insert(victims, key); chosen[key] = true end
  end
end
local extra = redis.call('ZCARD', KEYS[2]) - #victims - tonumber(ARGV[1])
if extra > 0 then
  for _, key in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra + #victims)) do
    if extra == 0 then break end
    if not chosen[key] and key ~= keep then
      table.insert(victims, key); chosen[key] = true; extra = extra - 1
    end
  end
end
if ARGV[5] == '1' then return victims end
for _, key in ipairs(victims) do
  local entry = decoded(redis.call('HGET', KEYS[1], key))
  if entry and type(entry.sessionId) == 'string' then
    redis.call('DEL', ARGV[4] .. entry.sessionId)
  end
  redis.call('HDEL', KEYS[1], key)
  redis.call('ZREM', KEYS[2], key)
end
return victims
""")
