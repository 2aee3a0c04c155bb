-- Each provider says a different amount at once (Vonage 1,500 characters,
-- Telnyx 3,000, Twilio 4,096 bytes; 5,000 with a Google voice), checked per
-- provider when a campaign is saved (tocsin_core::speech). The column keeps
-- only the widest bound.
ALTER TABLE campaigns DROP CONSTRAINT campaigns_message_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_message_check
    CHECK (message <> '' AND length(message) <= 5000);
