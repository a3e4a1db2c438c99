-- wrk script: single-event POST /publish, a share of them duplicates of earlier ids.
-- Environment: BENCH_RUN (id prefix), BENCH_DUP (duplicate share, 0..1), BENCH_TOPIC.
local run = os.getenv("BENCH_RUN") or "run"
local dup = tonumber(os.getenv("BENCH_DUP") or "0.2")
local topic = os.getenv("BENCH_TOPIC") or "bench.single"
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  math.randomseed(thread_id * 7919 + 17)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  local id
  if counter > 0 and math.random() < dup then
    id = math.random(0, counter - 1)
  else
    id = counter
    counter = counter + 1
  end
  local body = string.format(
    '{"topic":"%s","event_id":"%s-%d-%d","timestamp":"2025-10-21T10:00:00Z",' ..
    '"source":"wrk","payload":{"msg":"event %d","n":%d}}',
    topic, run, thread_id, id, id, id)
  return wrk.format(nil, "/publish", nil, body)
end
