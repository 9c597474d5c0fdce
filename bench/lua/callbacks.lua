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
--   BENCH_RETRY_AFTER optional, "1": a 429 holds its job back for Retry-After seconds, as the
--                     trainer SDK does (the job id is read from the error's details)

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

local job_by_id = {}
local honour_retry_after = os.getenv("BENCH_RETRY_AFTER") == "1"
held = 0        -- global: 429s received

function init(args)
  local template = os.getenv("BENCH_PATH")
  for line in io.lines(os.getenv("BENCH_JOBS_FILE")) do
    local id, token = line:match("^(%d+)%s+(%S+)")
    if id then
      local path = template:gsub("{job_id}", id)
      local job = {path = path, auth = "Bearer " .. token, resume_at = 0}
      table.insert(jobs, job)
      job_by_id[id] = job
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

local function next_job()
  local now = honour_retry_after and now_ms() or 0
  local job
  for _ = 1, #jobs do  -- the next job not held back, if there is one
    counter = counter + 1
    job = jobs[((counter * nthreads + tid) % #jobs) + 1]
    if job.resume_at <= now then
      return job
    end
  end
  return job
end

function request()
  local job = next_job()
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

if honour_retry_after then
  function response(status, headers, body)
    if status == 429 then
      held = held + 1
      local job = job_by_id[body:match('"job_id"%s*:%s*(%d+)') or ""]
      if job then
        job.resume_at = now_ms() + 1000 * (tonumber(headers["Retry-After"] or "1") or 1)
      end
    end
  end
end

-- Fixed rate: every connection that is free claims the thread's next time slot. A slot
-- already past is sent at once (caught up), and counted as late.
local function slot_wait(now)
  if next_slot == nil or now - next_slot > 1000 then
    next_slot = now
  end
  next_slot = next_slot + interval_ms
  scheduled = scheduled + 1
  local wait = next_slot - now
  if wait < -1 then
    late = late + 1
  end
  return math.max(wait, 0)
end

-- With every job held back by a 429, the connection waits for the first to resume.
local function hold_wait(now)
  local first = nil
  for _, job in ipairs(jobs) do
    if job.resume_at <= now then
      return 0
    end
    if first == nil or job.resume_at < first then
      first = job.resume_at
    end
  end
  return first - now
end

if tonumber(os.getenv("BENCH_RATE") or "0") > 0 or honour_retry_after then
  function delay()
    local now = now_ms()
    local wait = interval_ms and slot_wait(now) or 0
    if honour_retry_after then
      wait = math.max(wait, hold_wait(now))
    end
    return math.floor(wait + 0.5)
  end
end

function done(summary, latency, requests)
  local late_total, scheduled_total, held_total = 0, 0, 0
  for _, thread in ipairs(threads) do
    late_total = late_total + (thread:get("late") or 0)
    scheduled_total = scheduled_total + (thread:get("scheduled") or 0)
    held_total = held_total + (thread:get("held") or 0)
  end
  local e = summary.errors
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"min": %d, "max": %d, ' ..
    '"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p999": %d}, "late": %d, ' ..
    '"scheduled": %d, "held": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    late_total, scheduled_total, held_total))
  out:close()
end
