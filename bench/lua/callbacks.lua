-- wrk script for the benchmark: POSTs progress callbacks with 20 metrics, rotating over many
-- jobs, each with its own bearer token, and a unique Idempotency-Key per request (as the
-- trainer SDK sends). Configured through the environment (wrk passes script arguments to the
-- worker threads only, not to setup/done):
--   BENCH_JOBS_FILE   lines "job_id token"
--   BENCH_PATH        path template; "{job_id}" is replaced
--   BENCH_KEYS        metric names, one per line
--   BENCH_NONCE       makes idempotency keys unique across runs
--   BENCH_STEP_OFFSET first step number (steps keep growing across rounds)
--   BENCH_THREADS     wrk threads (to split BENCH_RATE)
--   BENCH_RATE        optional: requests/s in total, at fixed intervals (open loop while
--                     the connections keep up; see `late` in the result)
--   BENCH_OUT         where done() writes its JSON summary

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clk_id, bench_timespec_t *tp);
]]
local timespec = ffi.new("bench_timespec_t")
local function now_ms()
  ffi.C.clock_gettime(1, timespec) -- CLOCK_MONOTONIC
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local jobs = {}
local keys = {}
local counter = 0
local nthreads = 1
local nonce = ""
local step_offset = 0
local interval_ms = nil
local next_slot = nil
late = 0        -- globals: read by done() through thread:get
scheduled = 0

function init(args)
  local template = os.getenv("BENCH_PATH")
  for line in io.lines(os.getenv("BENCH_JOBS_FILE")) do
    local id, token = line:match("^(%d+)%s+(%S+)")
    if id then
      local path = template:gsub("{job_id}", id)
      table.insert(jobs, {path = path, auth = "Bearer " .. token})
    end
  end
  for key in (os.getenv("BENCH_KEYS") or ""):gmatch("[^\n]+") do
    table.insert(keys, key)
  end
  nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  nonce = os.getenv("BENCH_NONCE") or "bench"
  step_offset = tonumber(os.getenv("BENCH_STEP_OFFSET") or "0")
  local rate = tonumber(os.getenv("BENCH_RATE") or "0")
  if rate > 0 then
    interval_ms = 1000 * nthreads / rate
  end
end

function request()
  counter = counter + 1
  local job = jobs[((counter * nthreads + tid) % #jobs) + 1]
  local step = step_offset + counter
  local parts = {}
  for i, key in ipairs(keys) do
    parts[i] = string.format('"%s": %.5f', key, ((step * 7 + i * 13) % 1000) * 0.001)
  end
  local body = string.format(
    '{"current_epoch": %d, "total_epochs": 100, "step": %d, "metrics": {%s}}',
    math.floor(step / #jobs) + 1, step, table.concat(parts, ", "))
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = job.auth,
    ["Idempotency-Key"] = nonce .. "-" .. tid .. "-" .. counter,
  }
  return wrk.format("POST", job.path, headers, body)
end

-- Fixed rate: every connection that is free claims the thread's next time slot. A slot
-- already past is sent at once (caught up), and counted as late.
if tonumber(os.getenv("BENCH_RATE") or "0") > 0 then
  function delay()
    local now = now_ms()
    if next_slot == nil or now - next_slot > 1000 then
      next_slot = now
    end
    next_slot = next_slot + interval_ms
    scheduled = scheduled + 1
    local wait = next_slot - now
    if wait < -1 then
      late = late + 1
    end
    if wait < 0 then
      return 0
    end
    return math.floor(wait + 0.5)
  end
end

function done(summary, latency, requests)
  local late_total, scheduled_total = 0, 0
  for _, thread in ipairs(threads) do
    late_total = late_total + (thread:get("late") or 0)
    scheduled_total = scheduled_total + (thread:get("scheduled") or 0)
  end
  local e = summary.errors
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"min": %d, "max": %d, ' ..
    '"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p999": %d}, "late": %d, ' ..
    '"scheduled": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    late_total, scheduled_total))
  out:close()
end
