-- wrk script: create collections in a few projects.
local counter = 0

request = function()
  counter = counter + 1
  local body = string.format('{"name":"bench %d","description":"made by wrk"}', counter)
  local project = string.format("00000000-0000-4000-8000-%012d", counter % 50)
  return wrk.format("POST", "/projects/" .. project .. "/collections",
    {["content-type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  io.write(string.format("requests/s %.1f  requests %d  non-2xx %d  socket errors %d\n",
    summary.requests / (summary.duration / 1e6), summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  io.write(string.format("latency ms  p50 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
