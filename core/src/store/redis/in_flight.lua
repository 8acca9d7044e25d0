-- Floodgate: the places in flight of one key of one rule (max_in_flight), with
-- the same arithmetic as `Flight` in core/src/policy/lifecycle.rs: places are
-- counted per period of in_flight_ttl (this period's and the previous one's), so
-- a place never given back is released by the store 1-2 periods after it was
-- taken, and the key expires with them.
-- KEYS[1]  the key's places: a hash {p = period mod 2^32, a = previous, b = this}
-- ARGV[1]  now in µs, or -1 to use the server's TIME
-- ARGV[2]  mode: a = acquire, r = release, h = held
-- ARGV[3]  in_flight_ttl in µs (the period)
-- ARGV[4]  a: the most places; r: the period the place was taken in
-- Returns {period taken (a: -1 when full; r, h: 0), places held after}.

local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local M = 4294967296
local ttl = tonumber(ARGV[3])
local period = math.floor(now / ttl) % M
local st = redis.call('HMGET', KEYS[1], 'p', 'a', 'b')
local p, a, b = tonumber(st[1] or period), tonumber(st[2] or '0'), tonumber(st[3] or '0')
local gap = (period - p) % M
if gap == 1 then a, b = b, 0 elseif gap ~= 0 then a, b = 0, 0 end

local mode, taken = ARGV[2], 0
if mode == 'a' then
  if a + b >= tonumber(ARGV[4]) then return { -1, a + b } end
  b, taken = b + 1, period
elseif mode == 'r' then
  local back = (period - tonumber(ARGV[4])) % M
  if back == 0 then b = math.max(b - 1, 0) elseif back == 1 then a = math.max(a - 1, 0) end
else
  return { 0, a + b }
end
if a + b == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'p', period, 'a', a, 'b', b)
  redis.call('PEXPIRE', KEYS[1], math.floor((2 * ttl + 999) / 1000) + 1)
end
return { taken, a + b }
