-- wrk script for POST /v1/chat/completions (used by benchmarks/run.py and profile.py).
--
-- Environment:
--   BENCH_TOKEN   bearer token (sent as "Authorization: Bearer ..."; omitted when empty)
--   BENCH_MODEL   the body's "model" (default "moltbot:main")
--   BENCH_STREAM  "1" for "stream": true
--   BENCH_USERS   N > 0: each request carries "user": "user-<tag>-<i>", i cycling 1..N
--                 (round-robin, so the requests in flight name distinct sessions when N >= c)
--   BENCH_TAG     distinguishes runs (fresh sessions per run)
--   BENCH_CONTENT the user message, already JSON-escaped (default "Say hello in ten words.")
-- done() prints one line "BENCHJSON {...}" with req/s, latency percentiles (ms) and errors.

local token  = os.getenv("BENCH_TOKEN") or ""
local model  = os.getenv("BENCH_MODEL") or "moltbot:main"
local stream = os.getenv("BENCH_STREAM") == "1"
local users  = tonumber(os.getenv("BENCH_USERS") or "0") or 0
local tag    = os.getenv("BENCH_TAG") or "t"
local content = os.getenv("BENCH_CONTENT") or ""
if content == "" then content = "Say hello in ten words." end

local function body_for(user)
  local b = '{"model":"' .. model .. '","messages":[{"role":"user","content":"' .. content .. '"}]'
  if stream then b = b .. ',"stream":true' end
  if user then b = b .. ',"user":"' .. user .. '"' end
  return b .. '}'
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
wrk.body = body_for(nil)

local requests_by_user = nil
local counter = 0

function init(args)
  if users > 0 then
    requests_by_user = {}
    for i = 1, users do
      requests_by_user[i] = wrk.format(nil, nil, nil, body_for("user-" .. tag .. "-" .. i))
    end
    -- threads start at different offsets so they do not walk the users in lockstep
    counter = math.random(0, users - 1)
  end
end

if users > 0 then
  request = function()
    counter = counter + 1
    return requests_by_user[(counter % users) + 1]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end
