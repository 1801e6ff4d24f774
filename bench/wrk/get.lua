-- GET one lead, cycling through many different ids of the caller's scope.
local ids = {}
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  wrk.headers["Authorization"] = "Bearer " .. args[2]
  i = math.random(#ids)
end
function request()
  i = i % #ids + 1
  return wrk.format("GET", "/api/v1/leads/" .. ids[i])
end
