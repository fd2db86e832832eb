-- POST /orders/checkout/<id>: every order START.."ORDERS-1" checked out once, split across wrk threads
-- (thread t of T takes START+t, START+t+T, ...). Past the last order, requests repeat paid orders (idempotent 200s),
-- so keep DURATION short enough, or ORDERS large enough, for the figure to mean fresh checkouts.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  orders = tonumber(os.getenv("ORDERS") or "100000")
  stride = tonumber(os.getenv("THREADS") or "2")
  next_id = tonumber(os.getenv("START") or "0") + id
  fresh = 0
end

request = function()
  local path = "/orders/checkout/" .. (next_id % orders)
  if next_id < orders then fresh = fresh + 1 end
  next_id = next_id + stride
  return wrk.format("POST", path)
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("fresh") end
  io.write(string.format("fresh checkouts sent: %d of %d requests\n", total, summary.requests))
end
