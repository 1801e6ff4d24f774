-- Create a lead (owned by the caller).
function init(args)
  wrk.headers["Authorization"] = "Bearer " .. args[2]
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  return wrk.format("POST", "/api/v1/leads", nil, '{"title": "Benchmark lead", "amount": 1200.0, "source_channel": "web"}')
end
