-- wrk script for tests/integration/test_versions_under_load.py: cycles through the three unversioned
-- iris routes (OIP infer, :predict, the typed /v1 route) and logs every answer as
-- "<unix time> <status> <X-Model-Version> <route>" to <out>.<thread id>, for the test to split by phase.
-- Arguments (after --): <api key> <out prefix>
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } mg_timespec;
int clock_gettime(int clk_id, mg_timespec *tp);
]]
local now = ffi.new("mg_timespec")

local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

local requests = {}
local sent = 0
local log

function init(args)
  local headers = { ["X-API-Key"] = args[1], ["Content-Type"] = "application/json" }
  local flower = "[5.9, 3.0, 5.1, 1.8]"
  requests[1] = wrk.format("POST", "/v2/models/iris/infer", headers,
    '{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": ' .. flower .. '}]}')
  requests[2] = wrk.format("POST", "/v1/models/iris:predict", headers, '{"instances": [' .. flower .. ']}')
  requests[3] = wrk.format("POST", "/v1/tabular/iris", headers,
    '{"sepal_length": 5.9, "sepal_width": 3.0, "petal_length": 5.1, "petal_width": 1.8}')
  log = io.open(args[2] .. "." .. id, "w")
  log:setvbuf("line")
end

function request()
  sent = sent + 1
  return requests[(sent % #requests) + 1]
end

function response(status, headers, body)
  ffi.C.clock_gettime(0, now)
  local route = "v1"
  if body:find('"model_name"', 1, true) and body:find('"outputs"', 1, true) then
    route = "v2"
  elseif body:find('"predictions"', 1, true) then
    route = "predict"
  end
  log:write(string.format("%.6f %d %s %s\n", tonumber(now.tv_sec) + tonumber(now.tv_nsec) / 1e9, status,
    headers["x-model-version"] or headers["X-Model-Version"] or "-", route))
end
