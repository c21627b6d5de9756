-- Who revealed identifiers: the OS account the command ran as (not $USER, which anyone can
-- set) and the person named with --operator; a reason is now always given.
ALTER TABLE reveal_audit ADD COLUMN os_user text;
ALTER TABLE reveal_audit ADD COLUMN operator text;
