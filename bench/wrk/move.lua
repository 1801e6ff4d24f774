-- Move a lead from prospecting to qualify. Every request takes a lead that has
-- not moved yet (threads take alternate ids), so every move is legal.
local ids = {}
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  wrk.headers["Authorization"] = "Bearer " .. args[2]
  wrk.headers["Content-Type"] = "application/json"
  i = tid + 1
end
function request()
  local id = ids[i]
  i = i + 2
  return wrk.format("POST", "/api/v1/leads/" .. id .. "/stage-moves", nil, '{"to_stage": "qualify"}')
end
