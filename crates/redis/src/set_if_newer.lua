-- tierkit set_if_newer, envelope version 1.
-- KEYS[1]: the key. ARGV[1]: the new envelope, or empty to remove the key. ARGV[2]: the new
-- value's created_at and ARGV[3]: the tier's clock, each 8 bytes, big-endian Unix ms.
-- ARGV[4]: the PXAT expiry in ms, or empty for none. Returns 1 when it wrote, 0 when the key
-- holds a live envelope created later.
local function cmp(a, b)
  for i = 1, 8 do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      if x < y then return -1 end
      return 1
    end
  end
  return 0
end
local function be(s, from, to)
  local n = 0
  for i = from, to do n = n * 256 + string.byte(s, i) end
  return n
end
-- head: the stored value's first 39 bytes (the header and a key echo's length).
local function holds_newer(head)
  if #head < 37 or string.sub(head, 1, 4) ~= 'TKV\1' then return false end
  local flags, echo = string.byte(head, 5), 0
  if flags == 1 then
    if #head < 39 then return false end
    echo = 2 + be(head, 38, 39)
  elseif flags ~= 0 then
    return false
  end
  if redis.call('STRLEN', KEYS[1]) ~= 37 + echo + be(head, 30, 33) then return false end
  if cmp(string.sub(head, 22, 29), ARGV[3]) <= 0 then return false end
  return cmp(string.sub(head, 6, 13), ARGV[2]) > 0
end
-- Only the header is read: the payload is never copied into the script.
local head = redis.pcall('GETRANGE', KEYS[1], 0, 38)
if type(head) == 'string' and holds_newer(head) then return 0 end
if ARGV[1] == '' then
  redis.call('UNLINK', KEYS[1])
elseif ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[4])
end
return 1
