-- GET /stock/find/<random item in 0..ITEMS-1>; ITEMS from the environment (default 100000).
local items = tonumber(os.getenv("ITEMS") or "100000")
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/stock/find/" .. math.random(0, items - 1))
end
