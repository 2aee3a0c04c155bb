-- A per-attempt secret in every URL a worker gives the provider (answer and
-- event URLs, `&token=`): set by the claim, checked by the webhook service
-- in constant time for answer documents, and required for an event to
-- change the call it names. Without it, anyone who knows a campaign's name
-- and a number (call ids are UUID v5 of both) could read the message, and
-- a signed event replayed to another call's URL could end that call.
ALTER TABLE calls ADD COLUMN url_token text;
