-- wrk script for bench/webhook.sh: replays pre-signed Vonage events (from
-- `loadgen --emit FILE`), each exactly once. Thread k of n sends lines
-- k, k+n, k+2n, ...; a thread that runs out sends GET /healthz instead, which
-- the summary subtracts (it is not an event).
local requests_file = os.getenv("WEBHOOK_REQUESTS")
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  nthreads = tonumber(os.getenv("WRK_THREADS") or "1")
  reqs = {}
  local i = 0
  for line in io.lines(requests_file) do
    if i % nthreads == id then
      local path, auth, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
      table.insert(reqs, wrk.format("POST", path, {
        ["Authorization"] = auth, ["Content-Type"] = "application/json" }, body))
    end
    i = i + 1
  end
  next_req = 1
  events_ok = 0
  events_failed = 0
  idle = 0
end

function request()
  local r = reqs[next_req]
  if r == nil then
    return wrk.format("GET", "/healthz")
  end
  next_req = next_req + 1
  return r
end

function response(status, headers, body)
  -- Responses arrive in request order on each connection, but several
  -- connections share a thread; count by status only.
  if status == 204 then
    events_ok = events_ok + 1
  elseif status == 200 then
    idle = idle + 1
  else
    events_failed = events_failed + 1
  end
end

function done(summary, latency, requests)
  local ok, failed, ran_out = 0, 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("events_ok")
    failed = failed + t:get("events_failed")
    ran_out = ran_out + t:get("idle")
  end
  io.write(string.format('{"ok_2xx": %d, "failed": %d, "healthz_after_running_out": %d, ' ..
    '"seconds": %.3f, "p50_ms": %.2f, "p99_ms": %.2f}\n',
    ok, failed, ran_out, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
