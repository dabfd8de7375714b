-- wrk script for the hmac-gateway benchmarks: send requests from a pool built by bench/run.py.
--
--   wrk -t1 -c32 -d5s -s bench/wrk_pool.lua http://127.0.0.1:PORT -- POOL_PREFIX BODY_BYTES DISTINCT
--
-- POOL_PREFIX.<thread index> holds one request head per line, its header lines separated by
-- TAB (no CRLF); every request carries the same body: BODY_BYTES times "a".
-- DISTINCT=1 (pre-signed requests, each with its own nonce): each request is meant to be sent
-- once; if the pool runs out the thread wraps around and counts it in "wraps" (the replays are
-- then refused 401 and show as status errors: such a run is invalid and bench/run.py says so).
-- done() prints one machine-readable line: BENCH_JSON {...}, latencies in microseconds.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local reqs = nil
local heads = nil
local body = ""
local n = 0
local i = 0
local distinct = false
wraps = 0

function init(args)
  local prefix = args[1]
  local body_bytes = tonumber(args[2])
  distinct = args[3] == "1"
  body = string.rep("a", body_bytes)
  heads = {}
  for line in io.lines(prefix .. "." .. tid) do
    heads[#heads + 1] = (line:gsub("\t", "\r\n")) .. "\r\n\r\n"
  end
  n = #heads
  -- Whole requests when they fit in 64 MiB, else head .. body per request.
  if n * (#body + 1024) <= 64 * 1024 * 1024 then
    reqs = {}
    for k = 1, n do
      reqs[k] = heads[k] .. body
    end
    heads = nil
  end
end

function request()
  i = i + 1
  if i > n then
    i = 1
    if distinct then
      wraps = wraps + 1
    end
  end
  if reqs then
    return reqs[i]
  end
  return heads[i] .. body
end

function done(summary, latency, requests)
  local total_wraps = 0
  for _, t in ipairs(threads) do
    total_wraps = total_wraps + (t:get("wraps") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"mean_us":%.1f,"max_us":%d,"wraps":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    total_wraps
  ))
end
