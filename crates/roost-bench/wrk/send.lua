-- wrk script: posts 256-byte opaque ciphertexts to the conversations `roost-bench receivers`
-- prepared, round robin over its pairs, each with a fresh client message id.
--
--   roost-bench receivers --pairs 50 --out /tmp/roost-pairs.tsv --seconds 40 &
--   wrk -t2 -c256 -d10s -s crates/roost-bench/wrk/send.lua http://127.0.0.1:8080 -- /tmp/roost-pairs.tsv
--
-- wrk is closed loop: each connection sends its next request when the reply to the last arrived.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  pairs_file = args[1] or "/tmp/roost-pairs.tsv"
  pair_list = {}
  for line in io.lines(pairs_file) do
    local path, authorization = line:match("^([^\t]+)\t(.+)$")
    if path then
      table.insert(pair_list, { path = path, authorization = authorization })
    end
  end
  if #pair_list == 0 then
    error("no pairs in " .. pairs_file)
  end
  -- 256 zero bytes in unpadded base64url (any bytes do: the server never reads them).
  ciphertext = string.rep("A", 342)
  next_pair = id
end

function request()
  counter = counter + 1
  local pair = pair_list[(next_pair % #pair_list) + 1]
  next_pair = next_pair + 1
  -- Ascending ids, as a client whose ids start with the send time would send them.
  local body = string.format('{"client_message_id":"w%012d-%d","epoch":1,"ciphertext":"%s"}', counter, id, ciphertext)
  return wrk.format("POST", pair.path, {
    ["Authorization"] = pair.authorization,
    ["Content-Type"] = "application/json",
  }, body)
end

function done(summary, latency, requests)
  io.write(string.format("requests: %d, non-2xx: %d, errors: %d\n",
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  io.write(string.format("latency p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
