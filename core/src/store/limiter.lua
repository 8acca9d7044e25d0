-- Floodgate: every quota of one request, decided and charged atomically.
-- Time is integer microseconds (Lua numbers are doubles: exact below 2^53).
-- KEYS[i]    state key of quota i (all share one hash tag: one slot, one node)
-- ARGV[1]    now in µs, or -1 to use the server's TIME
-- ARGV[2]    cost (>= 1)
-- ARGV[3]    1 = check and charge, 0 = peek (cost 1, nothing written)
-- then per quota, 3 values: algorithm (g, f, c, l), limit, period in µs
--   (g: emission interval T; f, c, l: window W)
-- Returns {deciding quota (1-based), allowed (0/1), remaining, retry_after µs, reset_after µs}.

local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local cost = tonumber(ARGV[2])
local charge = ARGV[3] == '1'

local function ceil_div(a, b) return math.floor((a + b - 1) / b) end

-- Each evaluator returns allowed, remaining, retry, reset, and a writer that charges.
local function gcra(key, limit, t, c)
  local tat = tonumber(redis.call('GET', key) or '0')
  local cap = limit * t
  local base = math.max(tat, now)
  local new = base + c * t
  local used = new - now
  if used <= cap then
    return true, math.floor((cap - used) / t), 0, used, function()
      if new > now then redis.call('SET', key, new, 'PX', ceil_div(used, 1000) + 1) end
    end
  end
  return false, math.floor(math.max(cap - (base - now), 0) / t), used - cap, base - now, nil
end

local function fixed(key, limit, w, c)
  local st = redis.call('HMGET', key, 'w', 'n')
  local idx = math.floor(now / w)
  local sw, n = tonumber(st[1] or '-1'), tonumber(st[2] or '0')
  if sw < idx or n == 0 then sw, n = idx, 0 end -- a later stored window (clock back) is kept
  local until_end = math.max((sw + 1) * w - now, 0)
  if n + c <= limit then
    local reset = until_end
    if n + c == 0 then reset = 0 end
    return true, limit - n - c, 0, reset, function()
      redis.call('HSET', key, 'w', sw, 'n', n + c)
      redis.call('PEXPIRE', key, ceil_div(until_end, 1000) + 1)
    end
  end
  return false, math.max(limit - n, 0), until_end, until_end, nil
end

local function counter(key, limit, w, c)
  local st = redis.call('HMGET', key, 'w', 'p', 'c')
  local sw, prev, curr = tonumber(st[1] or '-1'), tonumber(st[2] or '0'), tonumber(st[3] or '0')
  local at = math.max(now, sw * w)
  local lag = at - now
  local idx = math.floor(at / w)
  if idx == sw + 1 then prev, curr = curr, 0 elseif idx > sw + 1 then prev, curr = 0, 0 end
  sw = idx
  local start = sw * w
  local off = at - start
  local function weighted(count, o) return ceil_div(count * (w - o), w) end
  local est = weighted(prev, off) + curr
  local function until_windows(k) return lag + start + k * w - at end
  local reset = 0
  if curr > 0 then reset = until_windows(2) elseif prev > 0 then reset = until_windows(1) end
  if est + c <= limit then
    if c > 0 and curr == 0 then reset = until_windows(2) end
    return true, limit - est - c, 0, reset, function()
      redis.call('HSET', key, 'w', sw, 'p', prev, 'c', curr + c)
      redis.call('PEXPIRE', key, ceil_div(2 * w, 1000) + 1)
    end
  end
  -- Smallest offset where ceil(count * (W - o) / W) <= room, or W.
  local function fitting(count, room)
    if count <= room then return 0 end
    return w - math.floor(room * w / count)
  end
  local retry_at
  local room = limit - c - curr
  if room >= 0 and fitting(prev, room) < w then
    retry_at = start + fitting(prev, room)
  else
    retry_at = start + w + fitting(curr, limit - c)
  end
  return false, math.max(limit - est, 0), lag + retry_at - at, reset, nil
end

local function log(key, limit, w, c)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - w)
  local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local total, last = 0, nil
  for i = 1, #entries, 2 do
    total = total + tonumber(string.match(entries[i], ':(%d+)$'))
    last = tonumber(entries[i + 1])
  end
  if total + c <= limit then
    local reset = 0
    if c > 0 then reset = w elseif last then reset = last + w - now end
    return true, limit - total - c, 0, reset, function()
      if c > 0 then
        local seq = redis.call('INCR', key .. ':seq')
        redis.call('ZADD', key, now, seq .. ':' .. c)
        redis.call('PEXPIRE', key, ceil_div(w, 1000) + 1)
        redis.call('PEXPIRE', key .. ':seq', ceil_div(w, 1000) + 1)
      end
    end
  end
  local need, retry = total + c - limit, 0
  for i = 1, #entries, 2 do
    retry = tonumber(entries[i + 1]) + w - now
    need = need - tonumber(string.match(entries[i], ':(%d+)$'))
    if need <= 0 then break end
  end
  local reset = 0
  if last then reset = last + w - now end
  return false, math.max(limit - total, 0), retry, reset, nil
end

local algorithms = { g = gcra, f = fixed, c = counter, l = log }

local function decide(c)
  local best, best_i, writers = nil, 0, {}
  for i = 1, #KEYS do
    local b = 3 + (i - 1) * 3
    local f = algorithms[ARGV[b + 1]]
    local ok, rem, retry, reset, writer = f(KEYS[i], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), c)
    writers[i] = writer
    local better = best == nil
      or (not ok and best[1])
      or (not ok and not best[1] and retry > best[3])
      or (ok and best[1] and rem < best[2])
    if better then best, best_i = { ok, rem, retry, reset }, i end
  end
  return best, best_i, writers
end

if charge then
  local best, i, writers = decide(cost)
  if best[1] then
    for _, w in ipairs(writers) do w() end
  end
  return { i, best[1] and 1 or 0, best[2], best[3], best[4] }
end
-- Peek: allowed and retry for one unit, remaining and reset as they stand.
local one, i = decide(1)
local zero = decide(0)
return { i, one[1] and 1 or 0, zero[2], one[3], zero[4] }
