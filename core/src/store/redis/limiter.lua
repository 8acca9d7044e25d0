-- Floodgate: every quota of one request, decided and charged atomically.
-- Time is integer microseconds (Lua numbers are doubles: exact below 2^53).
-- KEYS       the state: one key holding every quota's state ("packed":
--            little-endian doubles, exact integers below 2^53: a GCRA quota's
--            TAT, a fixed window's index and count, a sliding window's index
--            and previous and current counts, quota after quota, then the
--            key's expiry on Redis's clock, 0 if unknown) when no
--            quota is a sliding log and the call is not one GCRA quota; else
--            one key per quota (a GCRA TAT string, a window hash, a log zset).
--            All share one hash tag: one slot, one node.
-- ARGV[1]    now in µs, or -1 to use the server's TIME, or a calendar rule's
--            windows "k start end next_end before during after" (see below)
-- ARGV[2]    cost (>= 1)
-- ARGV[3]    mode: c = check and charge, p = peek (nothing written),
--            l = lease (charge up to ARGV[4] units, at least the cost), r = refund
-- ARGV[4]    lease size (units wanted in mode l)
-- then per quota, 3 values: algorithm (g, f, c, l), limit, period in µs
--   (g: emission interval T; f, c, l: window W)
-- Returns {deciding quota (1-based), allowed (0/1), remaining, retry_after µs,
--          reset_after µs, units charged}.
--
-- Merged calls (several checks, one round trip; standalone Redis only, the
-- keys need not share a slot): ARGV[2] = 'B', ARGV[3] = the number of checks,
-- ARGV[4] = the number of shapes; then per shape (what the checks of one
-- limiter share): its number of quotas k, mode, lease size and 3 values per
-- quota; then per check: its shape (1-based) and its cost. ARGV[2] = 'U' when
-- every check is of the one shape and one cost: that cost, once. KEYS are every
-- check's keys in order (one packed key each, or k). Checks are decided one
-- after the other in that order (two of one hot key see each other), each
-- all-or-nothing over its quotas;
-- TIME is read once. Returns every check's reply, in order: its six values,
-- or a compact form (see the loop below): an admitted check charged its cost
-- is 3 values, a denied one-GCRA check 4, a one-GCRA check admitted on a key
-- that was not there 1 (-100: its remaining and reset follow from its quota).
--
-- Kept lean on purpose: EVALSHA's fixed cost dominates on a fast server, so there
-- are no per-call tables beyond the state array and no closures per quota.

local now = tonumber(ARGV[1])
if now == nil then
  -- A calendar rule: "k start end next_end before during after" (µs). Calendar
  -- time is the server's TIME plus the offset of the window it falls in.
  local t = redis.call('TIME')
  local s = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local f = {}
  for x in string.gmatch(ARGV[1], '%d+') do f[#f + 1] = tonumber(x) end
  if s < f[1] then now = s + f[4]
  elseif s < f[2] then now = s + f[5]
  else now = math.min(s, f[3] - 1) + f[6] end
end
-- Whether now is Redis's own clock (TIME): a packed key's expiry is then known.
local server_clock = false
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  server_clock = true
end
local floor, max = math.floor, math.max

-- SET ... NX GET (Redis 7.0 and later): a key that is not there is written
-- and read in one command.
local nx_get = (redis.REDIS_VERSION_NUM or 0) >= 0x070000

-- The common check: one GCRA quota (emission interval t, limit) on key, check
-- and charge c. Returns allowed (0/1), remaining, retry_after, reset_after (no
-- table, no closure) and whether the key was not there (then remaining is the
-- limit less c and reset_after c intervals).
-- A key that is not there (a bucket that was full again has expired: every
-- check of a client that comes back less often than the emission interval,
-- and every new key of a flood) is charged with one command, SET NX GET,
-- where GET then SET took two (measured inside Redis 7.0, 100k keys: 2.6 ->
-- 2.0 µs per check); a key that is there costs about what it did (the SET
-- NX GET that finds it, then the SET). What SET NX GET writes depends only on
-- the step (cost times interval) and now, so its two numbers are formatted
-- once per call and step (Redis 7.0 formats a number argument with "%.17g",
-- ~0.3 µs each), kept by step: checks of two GCRA limiters taking turns in a
-- merged call do not format theirs again each time.
-- (The table of steps is made only when a second step shows up: a single
-- call makes no table.)
local fresh_step, fresh_tat, fresh_px, fresh
local function gcra_one(key, t, limit, c)
  local cap, step = limit * t, c * t
  local v
  if nx_get and step <= cap then
    if step ~= fresh_step then
      local f = fresh and fresh[step]
      if f then
        fresh_tat, fresh_px = f[1], f[2]
      else
        local tat, px = string.format('%d', now + step), string.format('%d', floor((step + 999) / 1000) + 1)
        if fresh_step then
          fresh = fresh or { [fresh_step] = { fresh_tat, fresh_px } }
          fresh[step] = { tat, px }
        end
        fresh_tat, fresh_px = tat, px
      end
      fresh_step = step
    end
    v = redis.pcall('SET', key, fresh_tat, 'PX', fresh_px, 'NX', 'GET')
    if not v then
      local r = (cap - step) / t
      return 1, r - r % 1, 0, step, true
    end
    -- Refused (a Redis at maxmemory with noeviction refuses every write
    -- command, even one that finds its key): read it, so that a denial is
    -- still answered (an admission's SET below fails, as it would anyway).
    if type(v) == 'table' then v = redis.call('GET', key) end
  else
    v = redis.call('GET', key)
  end
  local base = tonumber(v or '0')
  if base < now then base = now end
  local used = base + c * t - now
  if used <= cap then
    local px, r = (used + 999) / 1000, (cap - used) / t
    redis.call('SET', key, base + c * t, 'PX', px - px % 1 + 1)
    return 1, r - r % 1, 0, used, false
  end
  return 0, floor(max(cap - (base - now), 0) / t), used - cap, base - now, false
end

-- A single call of one GCRA quota, check and charge (the common blocking
-- check): decided here, before the rest of this chunk runs. Every call of a
-- script runs its chunk, and making its functions (closures over ~40 locals)
-- and tables costs ~45k instructions, more than the check itself.
if #ARGV == 7 and ARGV[3] == 'c' and ARGV[5] == 'g' then
  local c = tonumber(ARGV[2])
  local ok, rem, retry, reset = gcra_one(KEYS[1], tonumber(ARGV[7]), tonumber(ARGV[6]), c)
  return { 1, ok, rem, retry, reset, ok * c }
end

-- A merged call whose checks all share one one-GCRA quota and one cost ('U',
-- one shape: one rule's checks, the common batch): decided here too, before
-- the chunk makes its closures and the merged loop its tables (measured
-- inside Redis: 18.1k -> 15.5k instructions a check in batches of 28). The
-- same compact replies as the loop at the end.
if #ARGV == 11 and ARGV[2] == 'U' and ARGV[4] == '1' and ARGV[5] == '1' and ARGV[6] == 'c'
    and ARGV[8] == 'g' then
  local limit, t, c = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
  local out, m = {}, 0
  for i = 1, tonumber(ARGV[3]) do
    local ok, rem, retry, reset, new = gcra_one(KEYS[i], t, limit, c)
    if new then
      out[m + 1], m = -100, m + 1
    elseif ok == 1 then
      out[m + 1], out[m + 2], out[m + 3] = 0, rem, reset
      m = m + 3
    else
      out[m + 1], out[m + 2], out[m + 3], out[m + 4] = -1, rem, retry, reset
      m = m + 4
    end
  end
  return out
end

-- The check being decided: its first key is KEYS[ko + 1], its arguments start
-- after ARGV[p] (p = 1 for a single call: ARGV[1] is the time), n quotas.
-- (In a merged call ARGV[p + 1] is the shape's k, and the cost is an argument.)
local ko, p, n, cost, mode = 0, 1, (#ARGV - 4) / 3, 0, 'c'
-- The quotas of the check being decided: alg, lim, per (parsed from ARGV once
-- per shape by quotas(): a tonumber is ~0.3 µs, as much as a Redis command's
-- own work, so not once per check). Per-quota state: s1, s2, s3 (meaning
-- depends on the algorithm), reused by every check of a merged call (only 1..n
-- is read).
-- ttl[i]: whether a charge on a window quota must set its key's TTL (the key
-- is new or moves to a new window; a key written for its window already lives
-- to that window's end, and HSET keeps a TTL).
local alg, lim, per, s1, s2, s3, ttl = nil, nil, nil, {}, {}, {}, {}

local function ceil_div(a, b) return floor((a + b - 1) / b) end

-- The algorithm, limit and period of the n quotas of the checks at p.
local function quotas()
  local a, l, w = {}, {}, {}
  for i = 1, n do
    local b = p + 1 + i * 3
    a[i], l[i], w[i] = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  end
  return a, l, w
end

-- Whether this is a merged call (a packed key's template pays for itself only
-- over many checks; see template).
local merged = false

-- The struct format of the one packed key of the checks at p with n quotas
-- (its values, then its expiry), or false when they keep a key per quota.
-- Worked out once per call, or once per shape of a merged call.
local function layout()
  if n == 1 and alg[1] == 'g' then return false end
  local f = 1
  for i = 1, n do
    local a = alg[i]
    if a == 'l' then return false end
    f = f + (a == 'g' and 1 or (a == 'f' and 2 or 3))
  end
  return '<' .. string.rep('d', f)
end

-- Writes every quota's state (s1, s2, s3 after adding c units) into the one
-- packed key, with the TTL the longest-lived quota needs: a TAT to itself, a
-- fixed window to its end, a sliding window to the next one's end. One SET
-- for any number of quotas, where a hash per window quota took an HMGET and
-- an HSET each.
-- The expiry stored with the key (pexp, on Redis's clock) saves the TTL's
-- cost: while it covers what the quotas need now, the state is overwritten in
-- place (SETRANGE keeps the TTL), and only otherwise written with a new TTL,
-- an eighth longer than needed so that a GCRA TAT does not move it at every
-- charge. Measured inside Redis 7.0 (one script, 100k keys): SET with PX 2.3-
-- 3.2 µs, SETRANGE 1.1 µs; struct.unpack into locals 0.15 µs, into a new table
-- 0.55-0.7 µs (a table per check is the GC's), hence no tables per check.
local wbuf, pexp = {}, nil
-- Writes the m state values in wbuf, which need the key for ttl µs.
local function store_packed(m, ttl, fmt)
  local out, key = wbuf, KEYS[ko + 1]
  -- (50 ms to spare: the key outlives this call whatever the script's length.)
  if server_clock and pexp ~= nil and pexp >= now + ttl and pexp - now > 50000 then
    out[m + 1] = pexp
    redis.call('SETRANGE', key, '0', struct.pack(fmt, unpack(out, 1, m + 1)))
  else
    local life = ttl + floor(ttl / 8)
    out[m + 1] = server_clock and now + life or 0
    redis.call('SET', key, struct.pack(fmt, unpack(out, 1, m + 1)), 'PX', ceil_div(life, 1000) + 1)
  end
end

local function write_packed(c, fmt)
  local out, m, ttl = wbuf, 0, 1
  for i = 1, n do
    local a, w = alg[i], per[i]
    local need
    if a == 'g' then
      local new = s1[i]
      if new < now then new = now end
      new = new + c * w
      out[m + 1], m = new, m + 1
      need = new - now
    elseif a == 'f' then
      out[m + 1], out[m + 2], m = s1[i], s2[i] + c, m + 2
      need = (s1[i] + 1) * w - now
    else
      out[m + 1], out[m + 2], out[m + 3], m = s1[i], s2[i], s3[i] + c, m + 3
      need = (s1[i] + 2) * w - now
    end
    if need > ttl then ttl = need end
  end
  store_packed(m, ttl, fmt)
end

-- A packed state's values, read without a table per check: rbuf (a layout of
-- more than 10 state values, four sliding windows or more, takes a table).
local rbuf, none = {}, {}

-- The packed key's values (f of them, then the expiry, kept in pexp), or none
-- (a value of another size, as no version of this script writes, reads as no
-- state).
local function read_packed(v, fmt)
  local f = #fmt - 2
  pexp = nil
  if not v or #v ~= 8 * (f + 1) then return none end
  local pk = rbuf
  if f < 11 then
    -- (Into locals, then rbuf: no table per check.)
    local a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11 = struct.unpack(fmt, v)
    pk[1], pk[2], pk[3], pk[4], pk[5], pk[6] = a1, a2, a3, a4, a5, a6
    pk[7], pk[8], pk[9], pk[10], pk[11] = a7, a8, a9, a10, a11
  else
    pk = { struct.unpack(fmt, v) }
  end
  pexp = pk[f + 1]
  return pk
end

local function load_packed(fmt)
  return read_packed(redis.call('GET', KEYS[ko + 1]), fmt)
end

-- Decides c units on quota i: allowed, remaining, retry_after, reset_after.
local function decide(i, c)
  local a, limit, w = alg[i], lim[i], per[i]
  if a == 'g' then
    local base = s1[i]
    if base < now then base = now end
    local used = base + c * w - now
    local cap = limit * w
    if used <= cap then
      local r = (cap - used) / w
      return true, r - r % 1, 0, used
    end
    return false, floor(max(cap - (base - now), 0) / w), used - cap, base - now
  elseif a == 'f' then
    local cnt = s2[i]
    local until_end = (s1[i] + 1) * w - now
    if until_end < 0 then until_end = 0 end
    if cnt + c <= limit then
      if cnt + c == 0 then return true, limit, 0, 0 end
      return true, limit - cnt - c, 0, until_end
    end
    return false, max(limit - cnt, 0), until_end, until_end
  elseif a == 'c' then
    local prev, curr = s2[i], s3[i]
    local start = s1[i] * w
    local at = now
    if start > at then at = start end
    local lag, off = at - now, at - start
    local est = (prev * (w - off) + w - 1) / w
    est = est - est % 1 + curr
    local reset = 0
    if curr > 0 then reset = lag + start + 2 * w - at elseif prev > 0 then reset = lag + start + w - at end
    if est + c <= limit then
      if c > 0 and curr == 0 then reset = lag + start + 2 * w - at end
      return true, limit - est - c, 0, reset
    end
    -- Smallest offset where ceil(count * (W - o) / W) <= room, or W.
    local function fitting(count, room)
      if count <= room then return 0 end
      return w - floor(room * w / count)
    end
    local retry_at
    local room = limit - c - curr
    if room >= 0 and fitting(prev, room) < w then
      retry_at = start + fitting(prev, room)
    else
      retry_at = start + w + fitting(curr, limit - c)
    end
    return false, max(limit - est, 0), lag + retry_at - at, reset
  else
    local e, total = s1[i], s2[i]
    local reset = 0
    if #e > 0 then reset = tonumber(e[#e]) + w - now end
    if total + c <= limit then
      if c > 0 then reset = w end
      return true, limit - total - c, 0, reset
    end
    local need, retry = total + c - limit, 0
    for j = 1, #e, 2 do
      retry = tonumber(e[j + 1]) + w - now
      need = need - tonumber(string.match(e[j], ':(%d+)$'))
      if need <= 0 then break end
    end
    return false, max(limit - total, 0), retry, reset
  end
end

-- The deciding quota for c units: the first denial with the longest retry, else
-- the allowing quota with the fewest units left.
local function decide_all(c)
  local bi, bok, brem, bretry, breset = 0, true, 0, 0, 0
  for i = 1, n do
    local ok, rem, retry, reset = decide(i, c)
    if bi == 0 or (not ok and bok) or (not ok and not bok and retry > bretry) or (ok and bok and rem < brem) then
      bi, bok, brem, bretry, breset = i, ok, rem, retry, reset
    end
  end
  return bi, bok, brem, bretry, breset
end

local function charge(c, packed)
  if packed then return write_packed(c, packed) end
  for i = 1, n do
    local a, key, w = alg[i], KEYS[ko + i], per[i]
    if a == 'g' then
      local new = max(s1[i], now) + c * w
      redis.call('SET', key, new, 'PX', ceil_div(new - now, 1000) + 1)
    elseif a == 'f' then
      redis.call('HSET', key, 'w', s1[i], 'n', s2[i] + c)
      if ttl[i] then redis.call('PEXPIRE', key, ceil_div(max((s1[i] + 1) * w - now, 0), 1000) + 1) end
    elseif a == 'c' then
      redis.call('HSET', key, 'w', s1[i], 'p', s2[i], 'c', s3[i] + c)
      if ttl[i] then redis.call('PEXPIRE', key, ceil_div(2 * w, 1000) + 1) end
    else
      local seq = redis.call('INCR', key .. ':seq')
      redis.call('ZADD', key, now, seq .. ':' .. c)
      redis.call('PEXPIRE', key, ceil_div(w, 1000) + 1)
      redis.call('PEXPIRE', key .. ':seq', ceil_div(w, 1000) + 1)
    end
  end
end

-- Check and charge c on a packed key (mode 'c', the common case of several
-- quotas): every quota's state read, decided and written in one pass, where
-- the general path (decide_all, then charge) takes two passes and ~10 Lua
-- calls per check (a Lua call costs about as much as 6 table reads here).
-- An admitted quota is decided inline, with decide's arithmetic for c >= 1; a
-- denial goes through decide. Decides c units on the state values pk (none:
-- empty quotas) and leaves the state after them in wbuf: returns the deciding
-- quota, allowed, remaining, retry_after, reset_after, the number of state
-- values and the TTL they need.
local function decide_packed(pk, c)
  local out = wbuf
  local j, m, ttl = 1, 0, 1
  local bi, bok, brem, bretry, breset = 0, true, 0, 0, 0
  for i = 1, n do
    local a, limit, w = alg[i], lim[i], per[i]
    local ok, rem, retry, reset, need = true, 0, 0, 0, 0
    if a == 'g' then
      local base = pk[j] or 0
      j = j + 1
      s1[i] = base
      if base < now then base = now end
      local used = base + c * w - now
      local cap = limit * w
      if used <= cap then
        rem = (cap - used) / w
        rem, reset = rem - rem % 1, used
      else
        ok, rem, retry, reset = decide(i, c)
      end
      out[m + 1], m, need = base + c * w, m + 1, used
    elseif a == 'f' then
      local sw, cnt = pk[j] or -1, pk[j + 1] or 0
      j = j + 2
      local idx = now / w
      idx = idx - idx % 1
      if sw < idx or cnt == 0 then sw, cnt = idx, 0 end -- a later stored window (clock back) is kept
      s1[i], s2[i] = sw, cnt
      need = (sw + 1) * w - now
      if cnt + c <= limit then
        rem, reset = limit - cnt - c, need > 0 and need or 0
      else
        ok, rem, retry, reset = decide(i, c)
      end
      out[m + 1], out[m + 2], m = sw, cnt + c, m + 2
    else
      local sw, prev, curr = pk[j] or -1, pk[j + 1] or 0, pk[j + 2] or 0
      j = j + 3
      local idx = sw * w
      if idx < now then idx = now end
      idx = idx / w
      idx = idx - idx % 1
      if idx == sw + 1 then prev, curr = curr, 0 elseif idx > sw + 1 then prev, curr = 0, 0 end
      s1[i], s2[i], s3[i] = idx, prev, curr
      local start = idx * w
      local off = now - start
      if off < 0 then off = 0 end
      local est = (prev * (w - off) + w - 1) / w
      est = est - est % 1 + curr
      need = start + 2 * w - now
      if est + c <= limit then
        rem, reset = limit - est - c, need
      else
        ok, rem, retry, reset = decide(i, c)
      end
      out[m + 1], out[m + 2], out[m + 3], m = idx, prev, curr + c, m + 3
    end
    if need > ttl then ttl = need end
    if bi == 0 or (not ok and bok) or (not ok and not bok and retry > bretry) or (ok and bok and rem < brem) then
      bi, bok, brem, bretry, breset = i, ok, rem, retry, reset
    end
  end
  return bi, bok, brem, bretry, breset, m, ttl
end

-- What SET NX GET writes for a packed key that is not there: the state after
-- c units on empty quotas, and the reply, worked out once per call for each
-- shape and cost (from the same decide_packed), or nothing when empty quotas
-- would not admit c. A key that is not there (the first check of a client,
-- every key of a flood of new ones) then costs one command and no packing:
-- callgrind inside Redis 7.0, two sliding windows: ~45k -> ~22k instructions;
-- a key that is there pays ~4.5k more (SET NX GET finds it where GET did).
-- Only in merged calls: a single call would work out the template for one
-- check, as much work as deciding it.
-- The one in use is in tmpl_*; every one made in this call is kept by shape
-- (its alg table) and cost, so that checks of two limiters taking turns in a
-- merged call (two rules of one request) do not make theirs again each time.
local tmpl_alg, tmpl_c, tmpl_v, tmpl_px, tmpl_i, tmpl_rem, tmpl_reset
local tmpls = {}
local function template(c, fmt)
  tmpl_alg, tmpl_c = alg, c
  local by_cost = tmpls[alg]
  if not by_cost then
    by_cost = {}
    tmpls[alg] = by_cost
  end
  local t = by_cost[c]
  if not t then
    t = { false }
    local i, ok, rem, _, reset, m, ttl = decide_packed(none, c)
    if ok then
      local life = ttl + floor(ttl / 8)
      wbuf[m + 1] = server_clock and now + life or 0
      t = { struct.pack(fmt, unpack(wbuf, 1, m + 1)), string.format('%d', ceil_div(life, 1000) + 1), i, rem, reset }
    end
    by_cost[c] = t
  end
  tmpl_v, tmpl_px, tmpl_i, tmpl_rem, tmpl_reset = t[1], t[2], t[3], t[4], t[5]
end

local function check_packed(c, fmt)
  local pk
  if nx_get and merged then
    if alg ~= tmpl_alg or c ~= tmpl_c then template(c, fmt) end
    if tmpl_v then
      local v = redis.pcall('SET', KEYS[ko + 1], tmpl_v, 'PX', tmpl_px, 'NX', 'GET')
      if not v then return tmpl_i, 1, tmpl_rem, 0, tmpl_reset, c end
      -- Refused (see gcra_one): read by load_packed below.
      if type(v) ~= 'table' then pk = read_packed(v, fmt) end
    end
  end
  pk = pk or load_packed(fmt)
  local i, ok, rem, retry, reset, m, ttl = decide_packed(pk, c)
  if not ok then return i, 0, rem, retry, reset, 0 end
  store_packed(m, ttl, fmt)
  return i, 1, rem, 0, reset, c
end


-- Decides and charges the check at (ko, p, n), of cost c, whose state is
-- packed in the struct format `packed` (its layout()) or not (false): the
-- reply's six values (no table: a merged call writes them in place).
local function one(c, packed)
  cost = c
  mode = ARGV[p + 2]
  -- (One GCRA quota, check and charge, never comes here: a single call is
  -- decided before the chunk's functions are made, a merged one calls
  -- gcra_one itself.)

  -- A check on a packed key: one pass (check_packed).
  if packed and mode == 'c' then return check_packed(cost, packed) end

  -- Per-quota state, loaded once: s1, s2, s3 (meaning depends on the algorithm),
  -- from the packed key's values (pk, the next one at j) or a key per quota.
  -- (A value of another size, as no version of this script writes, reads as
  -- no state.)
  local pk, j = nil, 1
  if packed then pk = load_packed(packed) end
  for i = 1, n do
    local a, key, w = alg[i], KEYS[ko + i], per[i]
    if a == 'g' then
      if packed then
        s1[i], j = pk[j] or 0, j + 1
      else
        s1[i] = tonumber(redis.call('GET', key) or '0')
      end
    elseif a == 'f' then
      local sw, cnt
      if packed then
        sw, cnt, j = pk[j] or -1, pk[j + 1] or 0, j + 2
      else
        local st = redis.call('HMGET', key, 'w', 'n')
        sw, cnt = tonumber(st[1] or '-1'), tonumber(st[2] or '0')
      end
      local idx = now / w
      idx = idx - idx % 1
      ttl[i] = sw < idx or cnt == 0
      if ttl[i] then sw, cnt = idx, 0 end -- a later stored window (clock back) is kept
      s1[i], s2[i] = sw, cnt
    elseif a == 'c' then
      local sw, prev, curr
      if packed then
        sw, prev, curr, j = pk[j] or -1, pk[j + 1] or 0, pk[j + 2] or 0, j + 3
      else
        local st = redis.call('HMGET', key, 'w', 'p', 'c')
        sw, prev, curr = tonumber(st[1] or '-1'), tonumber(st[2] or '0'), tonumber(st[3] or '0')
      end
      local idx = sw * w
      if idx < now then idx = now end
      idx = idx / w
      idx = idx - idx % 1
      ttl[i] = idx ~= sw
      if idx == sw + 1 then prev, curr = curr, 0 elseif idx > sw + 1 then prev, curr = 0, 0 end
      s1[i], s2[i], s3[i] = idx, prev, curr
    else
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - w)
      s1[i] = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
      local total = 0
      local e = s1[i]
      for j = 1, #e, 2 do total = total + tonumber(string.match(e[j], ':(%d+)$')) end
      s2[i] = total
    end
  end

  if mode == 'c' then
    local i, ok, rem, retry, reset = decide_all(cost)
    if ok then charge(cost, packed) end
    return i, ok and 1 or 0, rem, retry, reset, ok and cost or 0
  elseif mode == 'l' then
    -- As many units as every quota has left now, up to the lease size, at least cost.
    local _, _, left = decide_all(0)
    local want = math.min(tonumber(ARGV[p + 3]), left)
    if want < cost then want = cost end
    local i, ok, rem, retry, reset = decide_all(want)
    if ok then charge(want, packed) end
    return i, ok and 1 or 0, rem, retry, reset, ok and want or 0
  elseif mode == 'r' then
    if packed then
      -- The same refunds, in place, then one write (nothing stored: nothing to give back).
      if pexp == nil then return 1, 1, 0, 0, 0, 0 end
      for i = 1, n do
        local a, w = alg[i], per[i]
        if a == 'g' then
          s1[i] = max(s1[i] - cost * w, 0)
        elseif a == 'f' then
          if s1[i] == floor(now / w) then s2[i] = max(s2[i] - cost, 0) end
        elseif s1[i] == floor(now / w) then
          s3[i] = max(s3[i] - cost, 0)
        end
      end
      write_packed(0, packed)
      return 1, 1, 0, 0, 0, 0
    end
    for i = 1, n do
      local a, key, w = alg[i], KEYS[ko + i], per[i]
      if a == 'g' then
        if s1[i] > 0 then
          local tat = max(s1[i] - cost * w, 0)
          if tat > now then redis.call('SET', key, tat, 'PX', ceil_div(tat - now, 1000) + 1)
          else redis.call('DEL', key) end
        end
      elseif a == 'f' then
        if s2[i] > 0 and s1[i] == floor(now / w) then redis.call('HSET', key, 'n', max(s2[i] - cost, 0)) end
      elseif a == 'c' then
        if s3[i] > 0 and s1[i] == floor(now / w) then redis.call('HSET', key, 'c', max(s3[i] - cost, 0)) end
      else
        local left, e = cost, s1[i]
        local j = #e - 1
        while left > 0 and j >= 1 do
          local member = e[j]
          local units = tonumber(string.match(member, ':(%d+)$'))
          local take = math.min(units, left)
          redis.call('ZREM', key, member)
          if units > take then
            redis.call('ZADD', key, tonumber(e[j + 1]), string.match(member, '^(%d+):') .. ':' .. (units - take))
          end
          left = left - take
          j = j - 2
        end
      end
    end
    return 1, 1, 0, 0, 0, 0
  end
  -- Peek: allowed and retry for one unit, remaining and reset as they stand.
  local i, ok, _, retry = decide_all(1)
  local _, _, rem, _, reset = decide_all(0)
  return i, ok and 1 or 0, rem, retry, reset, 0
end

if ARGV[2] == 'B' or ARGV[2] == 'U' then
  merged = true
  -- Where each shape's arguments start (as p), its number of quotas, its
  -- state's layout and its number of keys.
  local at, ks, kk, fmt, sa, sl, sw, fast, q = {}, {}, {}, {}, {}, {}, {}, {}, 5
  for x = 1, tonumber(ARGV[4]) do
    local k = tonumber(ARGV[q])
    at[x], ks[x] = q - 1, k
    p, n = q - 1, k
    alg, lim, per = quotas()
    sa[x], sl[x], sw[x] = alg, lim, per
    fast[x] = n == 1 and ARGV[p + 2] == 'c' and alg[1] == 'g'
    fmt[x] = layout()
    kk[x] = fmt[x] and 1 or k
    q = q + 3 + 3 * k
  end
  local out, m = {}, 0
  -- 'U': every check is of the one shape and of one cost, sent once (the
  -- common batch: one rule's checks); 'B': each check's shape and cost.
  local each, x, c = ARGV[2] == 'B', 1, tonumber(ARGV[q])
  p, n, alg, lim, per = at[1], ks[1], sa[1], sl[1], sw[1]
  for _ = 1, tonumber(ARGV[3]) do
    if each then
      x, c = tonumber(ARGV[q]), tonumber(ARGV[q + 1])
      q = q + 2
      p, n, alg, lim, per = at[x], ks[x], sa[x], sl[x], sw[x]
    end
    if fast[x] then
      -- (Written out again in the early path for one-GCRA batches at the top:
      -- a Lua call per check costs ~300 instructions.)
      -- Compact, written in place: -100 when admitted on a key that was not
      -- there (remaining: the limit less the cost; reset: cost intervals);
      -- else 0, remaining, reset when allowed (the cost charged); -1,
      -- remaining, retry, reset when denied.
      local ok, rem, retry, reset, new = gcra_one(KEYS[ko + 1], per[1], lim[1], c)
      if new then
        out[m + 1], m = -100, m + 1
      elseif ok == 1 then
        out[m + 1], out[m + 2], out[m + 3] = 0, rem, reset
        m = m + 3
      else
        out[m + 1], out[m + 2], out[m + 3], out[m + 4] = -1, rem, retry, reset
        m = m + 4
      end
    else
      local i, ok, rem, retry, reset, granted = one(c, fmt[x])
      if ok == 1 and granted == c then
        -- Compact: the cost charged, deciding quota i (0 for the first).
        out[m + 1], out[m + 2], out[m + 3] = i == 1 and 0 or -i, rem, reset
        m = m + 3
      else
        out[m + 1], out[m + 2], out[m + 3], out[m + 4], out[m + 5], out[m + 6] = i, ok, rem, retry, reset, granted
        m = m + 6
      end
    end
    ko = ko + kk[x]
  end
  return out
end
alg, lim, per = quotas()
return { one(tonumber(ARGV[2]), layout()) }
