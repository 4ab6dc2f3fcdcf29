-- wrk script for the overload case of bench/reliability.py:
--   wrk -t1 -cC -dDs --timeout 30s -s post_image.lua URL -- BODY_FILE DELAY_MS
-- POSTs BODY_FILE (image/jpeg) to /v1/analyze; each connection waits DELAY_MS between requests,
-- so the offered rate is about C / (DELAY_MS + latency). Counts status codes and refusals that
-- lack Retry-After, and prints one JSON line at the end.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.path = "/v1/analyze"
  wrk.body = f:read("*all")
  f:close()
  wrk.headers["Content-Type"] = "image/jpeg"
  pause = tonumber(args[2] or "0")
  statuses = {}
  missing_retry_after = 0
end

function delay()
  return pause
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if (status == 429 or status == 503) and headers["retry-after"] == nil and headers["Retry-After"] == nil then
    missing_retry_after = missing_retry_after + 1
  end
end

function done(summary, latency, requests)
  local total, missing = {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do
      total[k] = (total[k] or 0) + v
    end
    missing = missing + t:get("missing_retry_after")
  end
  local parts = {}
  for k, v in pairs(total) do
    table.insert(parts, string.format('"%s": %d', k, v))
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_s": %.3f, "statuses": {%s}, "missing_retry_after": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, "p99_ms_all": %.2f}\n',
    summary.requests, summary.duration / 1e6, table.concat(parts, ", "), missing,
    e.connect, e.read, e.write, e.timeout, latency:percentile(99) / 1000))
end
