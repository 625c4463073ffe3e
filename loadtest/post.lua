-- wrk script: POST a SendGrid-shaped mail send, count non-2xx exactly and
-- print machine-readable results from done().
--
-- Usage: wrk ... -s post.lua http://127.0.0.1:PORT -- [count]
--   With the "count" argument every response is handed to Lua so that 1xx/3xx
--   and 2xx-but-wrong statuses are counted too. Without it we rely on wrk's
--   own status counter (statuses >= 400 only), which keeps wrk cheaper.

-- Exactly 200 bytes: the size matters because it decides whether a proxy can
-- read the body in the same read as the headers; keep it fixed across runs.
local body = '{"personalizations":[{"to":[{"email":"ada@example.com"}]}],'
  .. '"from":{"email":"ops@example.com"},"subject":"Spring sale",'
  .. '"content":[{"type":"text/plain","value":"Hello Ada, the big sale starts today."}]}'
assert(#body == 200, "post.lua: body must be exactly 200 bytes, is " .. #body)

-- Set as globals (not via request()) so wrk builds the request once and
-- reuses the bytes; a request() function would cost Lua work per request.
wrk.method = "POST"
wrk.path = "/v3/mail/send"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

non2xx = 0
counting = false

function init(args)
  counting = (args[1] == "count")
  if counting then
    -- Defining response() only in counting mode: wrk checks per response
    -- whether the global exists and skips header/body capture if not.
    response = function(status, headers, body)
      if status < 200 or status > 299 then
        non2xx = non2xx + 1
      end
    end
  end
end

function done(summary, latency, requests)
  local counted, mode = 0, "status>=400"
  for _, t in ipairs(threads) do
    if t:get("counting") then
      mode = "non2xx"
      counted = counted + t:get("non2xx")
    end
  end
  local e = summary.errors
  if mode ~= "non2xx" then
    counted = e.status
  end
  local secs = summary.duration / 1e6
  -- One line, key=value, parsed by run.sh/report.py. Latencies in microseconds.
  io.write(string.format(
    "BENCH requests=%d duration_s=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d "
      .. "non2xx=%d non2xx_mode=%s err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    counted, mode, e.connect, e.read, e.write, e.timeout))
end
