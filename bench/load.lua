-- wrk script: POST /publish with BENCH_BATCH events per request (1 = a single JSON object),
-- a BENCH_DUP share of them repeating an earlier id of the same thread (every fifth at 0.2).
-- With BENCH_READ set, GET requests of that kind instead: "stats" (/stats), "events" (a page
-- of 100 of all events) or "topic" (a page of 100 of one of BENCH_TOPICS topics "topic-<n>",
-- picked at random per request).
-- BENCH_PROTOCOL sends the same events in another protocol instead of /publish: "otlp"
-- (POST /v1/logs, OTLP JSON, the id as log.record.uid), "otlp-protobuf" (the same in protobuf), "loki" (POST /loki/api/v1/push, JSON;
-- a repeated event repeats its time and line, Loki's identity) or "bulk" (POST /_bulk, create
-- actions with _id). "publish-otlp-shape" is POST /publish again, each event with the payload
-- the OTLP rows' records are stored with (body, severity, attributes, time, resource): the
-- control that tells the cost of a protocol from the cost of what its records hold.
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

-- A native event: the same envelope around either payload.
local function envelope(n, source, payload)
  return string.format(
    '{"topic":"%s","event_id":"%s-%d-%d","timestamp":"2025-10-21T10:00:00Z",' ..
    '"source":"%s","payload":%s}', topic, run, tid, n, source, payload)
end

local function event()
  local n = next_n()
  return envelope(n, "wrk", string.format('{"msg":"event %d","n":%d}', n, n))
end

local function otlp_shaped_event()
  local n = next_n()
  return envelope(n, "otlp", string.format(
    '{"body":"event %d","severity_number":9,"severity_text":"INFO",' ..
    '"attributes":{"log.record.uid":"%s-%d-%d","n":%d},' ..
    '"time_unix_nano":"1761040800000000000","resource":{"service.name":"%s"}}',
    n, run, tid, n, n, topic))
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

-- OTLP in protobuf, as the SDKs send it by default: the wire format of the few fields used.
local function varint(n)
  local out = ""
  while n >= 128 do
    out = out .. string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  return out .. string.char(n)
end

local function field(tag, bytes) return string.char(tag) .. varint(#bytes) .. bytes end

-- timeUnixNano 1761040800000000000 (fixed64, little-endian): beyond a Lua number's precision.
local TIME = string.char(9, 0, 64, 248, 246, 70, 121, 112, 24)
-- The record's fixed fields: severity_number 9, severity_text "INFO".
local SEVERITY = string.char(0x10, 9) .. field(0x1a, "INFO")

-- A length prefix: one byte below 128, which every length of these records is but the body's.
local function len(bytes)
  local n = #bytes
  if n < 128 then return string.char(n) end
  return varint(n)
end

-- Built with as few calls as it takes: wrk's own CPU comes off the two cores the system
-- runs on, so a costly generator would be counted against the protocol (bench.protocols
-- reports what wrk spends per event).
local function otlp_pb_record()
  local n = next_n()
  local uid = string.format("%s-%d-%d", run, tid, n)
  local text = "event " .. n
  local count = "\24" .. varint(n)
  local record = TIME .. SEVERITY ..
    "\42" .. string.char(#text + 2) .. "\10" .. string.char(#text) .. text ..
    "\50" .. string.char(#uid + 20) .. "\10\14log.record.uid\18" .. string.char(#uid + 2) ..
    "\10" .. string.char(#uid) .. uid ..
    "\50" .. string.char(#count + 5) .. "\10\1n\18" .. string.char(#count) .. count
  return "\18" .. len(record) .. record
end

local paths = {publish = "/publish", otlp = "/v1/logs", ["otlp-protobuf"] = "/v1/logs",
               loki = "/loki/api/v1/push", bulk = "/_bulk"}
local function protocol_request()
  local body
  local kind = "application/json"
  if protocol == "otlp-protobuf" then
    kind = "application/x-protobuf"
    local resource = field(0x0a, field(0x0a, "service.name") ..
      field(0x12, field(0x0a, topic)))
    body = field(0x0a, field(0x0a, resource) .. field(0x12, table.concat(parts(otlp_pb_record))))
  elseif protocol == "otlp" then
    body = '{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name",' ..
      '"value":{"stringValue":"' .. topic .. '"}}]},"scopeLogs":[{"logRecords":[' ..
      table.concat(parts(otlp_record), ",") .. ']}]}]}'
  elseif protocol == "loki" then
    body = '{"streams":[{"stream":{"service_name":"' .. topic .. '","host":"wrk"},' ..
      '"values":[' .. table.concat(parts(loki_value), ",") .. ']}]}'
  else
    kind = "application/x-ndjson"
    body = table.concat(parts(bulk_pair))
  end
  local headers = {["Content-Type"] = kind}
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
  local make = event
  if protocol == "publish-otlp-shape" then
    make = otlp_shaped_event
  elseif protocol ~= "publish" then
    return protocol_request()
  end
  local body
  if batch == 1 then
    body = make()
  else
    local parts = {}
    for i = 1, batch do parts[i] = make() end
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
