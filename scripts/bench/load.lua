-- wrk script of scripts/bench/run: one command scenario, against Cutover or a peer (they
-- share routes and bodies), or Cutover's reads. Request number n runs from `first` up, spread over the threads, so
-- that consecutive runs on one server never repeat a request.
--
--   wrk ... -s load.lua URL -- SCENARIO FIRST THREADS [PREFIX BATCHES PLAYERS]
--
--   create    POST /projects/{p}/collections, 50 projects
--   distinct  POST /batches/{PREFIX-k}/completions: batch n % BATCHES, player n // BATCHES
--             (consecutive requests go to different batches)
--   hot       POST /batches/{PREFIX-k}/completions: batch n // PLAYERS, player n % PLAYERS
--             (every request goes to the same batch until its players are used up)
--   attempt   POST /students/{s}/attempts, 5,000 students x 240 subskills
--   read      GET /projects/{p}/collections?limit=10, the 50 projects of create
--
-- done() prints one JSON line: requests, errors, duration and latency percentiles (us).

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  scenario = args[1]
  first = tonumber(args[2])
  nthreads = tonumber(args[3])
  prefix = args[4] or ""
  batches = tonumber(args[5] or "1")
  players = tonumber(args[6] or "1")
  counter = 0
end

local json = { ["content-type"] = "application/json" }
local subjects = { "math", "reading", "science" }

local function completion(batch, player)
  -- The count follows the player, so a repeated request is an idempotent repeat.
  local body = string.format('{"player_lookup":"p%05d","predictions_count":%d}', player, player % 7)
  return wrk.format("POST", string.format("/batches/%s-%d/completions", prefix, batch), json, body)
end

request = function()
  local n = first + counter * nthreads + id
  counter = counter + 1
  if scenario == "read" then
    local project = string.format("00000000-0000-4000-8000-%012d", n % 50)
    return wrk.format("GET", "/projects/" .. project .. "/collections?limit=10")
  elseif scenario == "create" then
    local body = string.format('{"collection_name":"bench %d","description":"made by wrk"}', n)
    local project = string.format("00000000-0000-4000-8000-%012d", n % 50)
    return wrk.format("POST", "/projects/" .. project .. "/collections", json, body)
  elseif scenario == "distinct" then
    return completion(n % batches, math.floor(n / batches))
  elseif scenario == "hot" then
    return completion(math.floor(n / players), n % players)
  else
    local body = string.format(
      '{"subject":"%s","skill_id":"skill-%d","subskill_id":"sub-%d","score":%d,'
        .. '"analysis":"made by wrk","feedback":"keep going"}',
      subjects[n % 3 + 1], n % 20, n % 4, n % 11)
    return wrk.format("POST", string.format("/students/%d/attempts", n % 5000 + 1), json, body)
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,'
      .. '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    latency.mean))
end
