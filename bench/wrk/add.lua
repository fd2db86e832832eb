-- POST /stock/add/<random item in 0..ITEMS-1>/1; ITEMS from the environment (default 100000).
local items = tonumber(os.getenv("ITEMS") or "100000")
math.randomseed(os.time())
request = function()
  return wrk.format("POST", "/stock/add/" .. math.random(0, items - 1) .. "/1")
end
-- Count non-2xx answers so a run that "succeeds" with errors is visible.
done = function(summary, latency, requests)
  io.write(string.format("non-2xx responses: %d\n", summary.errors.status))
end
