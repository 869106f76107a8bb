-- @projection p
-- @version 1
/* /* */ */