-- wrk script: POST /publish with BENCH_BATCH events per request (1 = a single JSON object),
-- a BENCH_DUP share of them repeating an earlier id of the same thread (every fifth at 0.2).
-- With BENCH_READ set, GET requests of that kind instead: "stats" (/stats), "events" (a page
-- of 100 of all events) or "topic" (a page of 100 of one of BENCH_TOPICS topics "topic-<n>",
-- picked at random per request).
-- BENCH_PROTOCOL sends the same events in another protocol instead of /publish: "otlp"
-- (POST /v1/logs, OTLP JSON, the id as log.record.uid), "loki" (POST /loki/api/v1/push, JSON;
-- a repeated event repeats its time and line, Loki's identity) or "bulk" (POST /_bulk, create
-- actions with _id).
-- Prints one JSON line at the end: requests, non-2xx answers, latency percentiles in us.
local read = os.getenv("BENCH_READ")
local topics = tonumber(os.getenv("BENCH_TOPICS") or "1")
local run = os.getenv("BENCH_RUN") or "run"
local dup = tonumber(os.getenv("BENCH_DUP") or "0.2")
local batch = tonumber(os.getenv("BENCH_BATCH") or "1")
local topic = os.getenv("BENCH_TOPIC") or "bench"
local protocol = os.getenv("BENCH_PROTOCOL") or "publish"
local threads = {}
local next_thread = 0
made, unique = 0, 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(tid * 7919 + 17)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

-- The number of the next event: a new one, or (a BENCH_DUP share) an earlier one again.
local function next_n()
  local n
  if unique > 0 and math.floor((made + 1) * dup) ~= math.floor(made * dup) then
    n = math.random(0, unique - 1)
  else
    n = unique
    unique = unique + 1
  end
  made = made + 1
  return n
end

local function event()
  local n = next_n()
  return string.format(
    '{"topic":"%s","event_id":"%s-%d-%d","timestamp":"2025-10-21T10:00:00Z",' ..
    '"source":"wrk","payload":{"msg":"event %d","n":%d}}', topic, run, tid, n, n, n)
end

local function otlp_record()
  local n = next_n()
  return string.format(
    '{"timeUnixNano":"1761040800000000000","severityNumber":9,"severityText":"INFO",' ..
    '"body":{"stringValue":"event %d"},"attributes":[' ..
    '{"key":"log.record.uid","value":{"stringValue":"%s-%d-%d"}},' ..
    '{"key":"n","value":{"intValue":"%d"}}]}', n, run, tid, n, n)
end

local function loki_value()
  local n = next_n()
  return string.format('["%d","%s-%d-%d event %d"]', 1761040800000000000 + n, run, tid, n, n)
end

local function bulk_pair()
  local n = next_n()
  return string.format(
    '{"create":{"_index":"%s","_id":"%s-%d-%d"}}\n' ..
    '{"@timestamp":"2025-10-21T10:00:00Z","host":"wrk","msg":"event %d","n":%d}\n',
    topic, run, tid, n, n, n)
end

local function parts(make)
  local out = {}
  for i = 1, batch do out[i] = make() end
  return out
end

local paths = {publish = "/publish", otlp = "/v1/logs", loki = "/loki/api/v1/push",
               bulk = "/_bulk"}
local function protocol_request()
  local body
  if protocol == "otlp" then
    body = '{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name",' ..
      '"value":{"stringValue":"' .. topic .. '"}}]},"scopeLogs":[{"logRecords":[' ..
      table.concat(parts(otlp_record), ",") .. ']}]}]}'
  elseif protocol == "loki" then
    body = '{"streams":[{"stream":{"service_name":"' .. topic .. '","host":"wrk"},' ..
      '"values":[' .. table.concat(parts(loki_value), ",") .. ']}]}'
  else
    body = table.concat(parts(bulk_pair))
  end
  local headers = {["Content-Type"] = protocol == "bulk" and "application/x-ndjson"
                                      or "application/json"}
  return wrk.format("POST", paths[protocol], headers, body)
end

local function read_request()
  if read == "stats" then
    return wrk.format("GET", "/stats")
  elseif read == "events" then
    return wrk.format("GET", "/events?limit=100")
  end
  return wrk.format("GET", string.format("/events?topic=topic-%d&limit=100",
                                         math.random(0, topics - 1)))
end

request = function()
  if read then return read_request() end
  if protocol ~= "publish" then return protocol_request() end
  local body
  if batch == 1 then
    body = event()
  else
    local parts = {}
    for i = 1, batch do parts[i] = event() end
    body = "[" .. table.concat(parts, ",") .. "]"
  end
  return wrk.format(nil, "/publish", nil, body)
end

non2xx = 0  -- global: done() reads it from every thread
response = function(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("non2xx") end
  io.write(string.format(
    '{"requests":%d,"non2xx":%d,"errors":%d,"p50_us":%d,"p99_us":%d,"duration_us":%d}\n',
    summary.requests, bad, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout + summary.errors.status,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
