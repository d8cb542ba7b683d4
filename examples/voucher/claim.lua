-- Claims one voucher for one user, atomically: the global quota, the user's
-- limit, the claim record and the counters change together or not at all.
--
-- KEYS[1] remaining   quota left (an integer)
-- KEYS[2] user count  claims this user holds
-- KEYS[3] claim       this claim's record: the answer a retry gets back
-- KEYS[4] granted     claims granted so far
-- ARGV[1] per-user limit, ARGV[2] user id
--
-- All keys share the voucher's hash tag, so they share a slot and a range.
local prior = redis.call('GET', KEYS[3])
if prior then
  return prior -- a retry of a claim already granted: the first answer
end
local remaining = tonumber(redis.call('GET', KEYS[1]) or '0')
if remaining <= 0 then
  return 'SOLDOUT' -- the quota never grows back, so a retry answers the same
end
local held = tonumber(redis.call('GET', KEYS[2]) or '0')
if held >= tonumber(ARGV[1]) then
  return 'LIMIT' -- a user's count never shrinks, so a retry answers the same
end
redis.call('DECR', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('INCR', KEYS[4])
redis.call('SET', KEYS[3], 'GRANTED ' .. ARGV[2])
return 'GRANTED ' .. ARGV[2]
