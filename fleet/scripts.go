package fleet

import "github.com/redis/go-redis/v9"

// The scripts share one layout per budget: KEYS[1] the state hash, KEYS[2]
// the sorted set of grants in flight (member: spend id, score: when it is
// forgotten), KEYS[3] the probe lease (value: the probing spend's id),
// KEYS[4] the alias (a credential's charged identity, once an answer named
// it: its requests then spend from that identity's budget). Time
// is Redis' own (TIME, in milliseconds), so hosts with skewed clocks agree.
// Tokens travel as strings: Redis truncates Lua numbers to integers.

// prelude loads (or initialises from ARGV[2..4]: rate per ms, capacity,
// known) the state, refills it and forgets grants whose holder vanished.
const prelude = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'tokens', 'last', 'rate', 'cap', 'known', 'block', 'hold', 'probe')
local tokens, last, rate, cap = tonumber(h[1]), tonumber(h[2]), tonumber(h[3]), tonumber(h[4])
local known, block, hold, probe = tonumber(h[5]) or 0, tonumber(h[6]) or 0, tonumber(h[7]) or 0, tonumber(h[8]) or 0
if tokens == nil or rate == nil or cap == nil or last == nil then
  rate, cap, known = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  tokens, last = cap, now
end
if rate > 0 and now > last then
  tokens = math.min(cap, tokens + (now - last) * rate)
end
if now > last then last = now end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local ttl = tonumber(ARGV[5])
local function save()
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', last, 'rate', tostring(rate), 'cap', tostring(cap),
    'known', known, 'block', block, 'hold', hold, 'probe', probe)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local function unlease(id)
  if id ~= '' and redis.call('GET', KEYS[3]) == id then redis.call('DEL', KEYS[3]) end
end
`

// takeScript refills and takes one token, or says how long to wait (0:
// unknown, another host's answer is awaited). ARGV: 1 spend id, 2-4 the
// initial rate/capacity/known, 5 state TTL ms, 6 grant TTL ms, 7 probe
// lease TTL ms. Reply: {ok, wait ms, tokens, probe, spent, rate, cap,
// known}, or
// {-1, 0, charged identity} when the credential is an alias.
var takeScript = redis.NewScript(`
local alias = redis.call('GET', KEYS[4])
if alias then return {-1, 0, alias} end
` + prelude + `
local function reply(ok, wait, isprobe, spent)
  save()
  return {ok, wait, tostring(tokens), isprobe, spent, tostring(rate), tostring(cap), known}
end
local function grant(isprobe, spent)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ttl)
  return reply(1, 0, isprobe, spent)
end
if probe == 1 then
  if now < block then return reply(0, block - now, 0, 0) end
  if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', tonumber(ARGV[7])) then return grant(1, 0) end
  return reply(0, 0, 0, 0)
end
if known == 0 and redis.call('ZCARD', KEYS[2]) > 0 then
  return reply(0, 0, 0, 0)
end
if hold > 0 then
  if now < hold then return reply(0, hold - now, 0, 0) end
  hold = 0
  if rate > 0 then tokens = math.max(tokens, math.min(1, cap)) end
end
if rate <= 0 then return grant(0, 0) end
if tokens >= 1 - 1e-9 then
  tokens = tokens - 1
  return grant(0, 1)
end
return reply(0, math.ceil((1 - tokens) / rate), 0, 0)
`)

// observeScript folds one upstream answer into the shared state. ARGV: 1
// spend id (” for an answer not granted here), 2-4 the rate/capacity in
// force and known, 5 state TTL ms, 6 status, 7 headers seen (0/1), 8 has
// remaining, 9 remaining, 10 has reset, 11 reset ms, 12 block ms, 13 the
// spend was the probe, 14 the spend took a token, 15 reserve, 16 the
// identity charged when it is another's (” if not). Reply: {tokens}.
var observeScript = redis.NewScript(prelude + `
local id, status, headers = ARGV[1], tonumber(ARGV[6]), ARGV[7] == '1'
local had = 0
if id ~= '' then had = redis.call('ZREM', KEYS[2], id) end
if id ~= '' or headers then known = 1 end
if headers then
  local nrate, ncap = tonumber(ARGV[2]), tonumber(ARGV[3])
  if rate <= 0 and nrate > 0 then tokens = ncap else tokens = math.min(tokens, ncap) end
  rate, cap = nrate, ncap
end
local remaining = tonumber(ARGV[9])
if ARGV[8] == '1' then
  local ceiling = remaining - tonumber(ARGV[15]) - redis.call('ZCARD', KEYS[2])
  if rate > 0 then tokens = math.min(tokens, math.max(ceiling, -cap)) end
  if ARGV[10] == '1' then
    local reset = tonumber(ARGV[11])
    if ceiling <= 0 and reset > 0 then hold = now + reset else hold = 0 end
  end
end
local isprobe = ARGV[13] == '1'
if status == 429 then
  tokens = math.min(tokens, 0)
  local b = tonumber(ARGV[12])
  if b <= 0 then b = 1000 end
  if probe == 1 and not isprobe then
    if now + b > block then block = now + b end
  else
    block, probe = now + b, 1
  end
  if isprobe then unlease(id) end
elseif isprobe then
  if (status > 0 and status < 400) or (ARGV[8] == '1' and remaining > 0) then
    probe, block = 0, 0
  end
  unlease(id)
end
if had == 1 and ARGV[14] == '1' and not headers and status ~= 429 and rate > 0 then
  tokens = math.min(cap, tokens + 1)
end
if ARGV[16] ~= '' then redis.call('SET', KEYS[4], ARGV[16], 'PX', ttl) end
save()
return {tostring(tokens)}
`)

// endScript ends a spend without an answer to learn from. ARGV: 1 spend id,
// 2-4 initial rate/capacity/known, 5 state TTL ms, 6 refund (1: the
// request was never sent). Reply: {tokens}.
var endScript = redis.NewScript(prelude + `
local had = redis.call('ZREM', KEYS[2], ARGV[1])
if had == 1 and ARGV[6] == '1' and rate > 0 then tokens = math.min(cap, tokens + 1) end
unlease(ARGV[1])
save()
return {tostring(tokens)}
`)

// reconcileScript takes what a host spent on its local share while Redis
// was out of reach from the shared tokens. ARGV: 1 unused, 2-4 initial
// rate/capacity/known, 5 state TTL ms, 6 tokens spent. Reply: {tokens}.
var reconcileScript = redis.NewScript(prelude + `
if rate > 0 then tokens = math.max(tokens - tonumber(ARGV[6]), -cap) end
save()
return {tostring(tokens)}
`)

// heartbeatScript records this host alive and counts the hosts that beat
// within ARGV[2] ms. KEYS[1]: the hosts' sorted set; ARGV[1] the host id.
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
`)
