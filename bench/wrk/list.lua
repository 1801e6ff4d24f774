-- The first page of 50 leads in the caller's scope.
function init(args)
  wrk.headers["Authorization"] = "Bearer " .. args[2]
end
function request()
  return wrk.format("GET", "/api/v1/leads?limit=50")
end
