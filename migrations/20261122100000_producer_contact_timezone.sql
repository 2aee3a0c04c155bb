-- Producer (issue 7): a contact's own time zone, from the contact list's
-- time zone column. NULL means the campaign's `timezone`. The calling window
-- (campaigns.window_start/window_end) is local time in this zone.
ALTER TABLE calls ADD COLUMN timezone text;
