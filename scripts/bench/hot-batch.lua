-- wrk script: completions of distinct players on one batch ("hot"), 2 wrk threads.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

request = function()
  local n = counter * 2 + id
  counter = counter + 1
  local body = string.format('{"player_lookup":"p%05d","predictions_count":%d}', n % 10000, n % 7)
  return wrk.format("POST", "/batches/" .. batch .. "/completions",
    {["content-type"] = "application/json"}, body)
end

function init(args)
  batch = args[1] or "hot"
end

done = function(summary, latency, requests)
  io.write(string.format("completions/s %.1f  requests %d  non-2xx %d  socket errors %d\n",
    summary.requests / (summary.duration / 1e6), summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  io.write(string.format("latency ms  p50 %.2f  p99 %.2f  p99.9 %.2f\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
